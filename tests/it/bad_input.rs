//! Bad input is a project error: exit code 2, a message that names the file (and the line of
//! ttv.yaml) with what to do, and nothing in the cache or the outputs touched.

use crate::support::project::{Output, Project};

/// A copy of fixtures/basic built once (one frame: enough for .ttv/ and build/ to exist), then
/// broken by `breakage` and built again. The build must fail with exit code 2 and leave .ttv/ and
/// build/ exactly as they were. Returns the project (it holds the temp folder) and the failed run.
fn build_broken(breakage: impl FnOnce(&Project)) -> (Project, Output) {
    let p = Project::from_fixture("basic");
    p.ttv(&["build", "frame/arrival/start"]).success();
    let before = p.snapshot();
    breakage(&p);

    let out = p.ttv(&["build"]);
    out.code(2);
    let after = p.snapshot();
    if before != after {
        let changed: Vec<&String> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .collect();
        out.fail(&format!(
            "a failed build changed the cache or outputs: {changed:?}"
        ));
    }
    (p, out)
}

/// The error points at `ttv.yaml:LINE` and says what to do.
#[track_caller]
fn assert_at_line(out: &Output, line: usize) {
    out.stderr_contains(&format!("ttv.yaml:{line}"))
        .stderr_contains("help:");
}

#[test]
fn malformed_yaml() {
    let (_p, out) = build_broken(|p| {
        p.replace_in_yaml(
            "motion: \"Camera cranes up the tower as rain starts\"",
            "motion: \"Camera cranes up the tower as rain starts",
        )
    });
    let located = out.stderr.match_indices("ttv.yaml:").any(|(i, m)| {
        out.stderr[i + m.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    });
    out.check(located, "the error says where in ttv.yaml");
}

#[test]
fn unknown_key_suggests_the_known_one() {
    let (p, out) = build_broken(|p| p.replace_in_yaml("duration_seconds: 1", "duraton_seconds: 1"));
    assert_at_line(&out, p.yaml_line_of("duraton_seconds"));
    out.stderr_contains("duraton_seconds")
        .stderr_contains("did you mean")
        .stderr_contains("duration_seconds");
}

#[test]
fn shot_id_with_bad_characters() {
    let (p, out) = build_broken(|p| p.replace_in_yaml("- id: storm", "- id: Storm!"));
    assert_at_line(&out, p.yaml_line_of("Storm!"));
    out.stderr_contains("Storm!");
}

#[test]
fn duplicate_shot_id() {
    let (p, out) = build_broken(|p| p.replace_in_yaml("- id: lamp", "- id: storm"));
    let text = p.read("ttv.yaml");
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("- id: storm"))
        .map(|(i, _)| i + 1)
        .collect();
    out.check(
        lines
            .iter()
            .any(|l| out.stderr.contains(&format!("ttv.yaml:{l}"))),
        &format!("the error points at a line of the duplicate id {lines:?}"),
    )
    .stderr_contains("storm")
    .stderr_contains("help:");
}

#[test]
fn cut_without_a_start_frame() {
    let (p, out) = build_broken(|p| {
        p.replace_in_yaml("  - id: storm\n", "  - id: storm\n    transition: cut\n")
    });
    let shot = p.yaml_line_of("- id: storm");
    out.check(
        (shot..shot + 4).any(|l| out.stderr.contains(&format!("ttv.yaml:{l}:"))),
        "the error points into the storm shot",
    )
    .stderr_contains("start")
    .stderr_contains("help:");
}

#[test]
fn keyframe_position_middle_is_rejected_with_why() {
    let (p, out) = build_broken(|p| {
        p.replace_in_yaml(
            "  duration_seconds: 1\n",
            "  keyframe_position: middle\n  duration_seconds: 1\n",
        )
    });
    assert_at_line(&out, p.yaml_line_of("keyframe_position"));
    out.stderr_contains("middle");
}

#[test]
fn duration_the_backend_cannot_make() {
    let (p, out) =
        build_broken(|p| p.replace_in_yaml("duration_seconds: 1", "duration_seconds: 30"));
    assert_at_line(&out, p.yaml_line_of("duration_seconds"));
    out.stderr_contains("30");
}

#[test]
fn start_image_outside_the_project() {
    let (p, out) = build_broken(|p| {
        p.replace_in_yaml(
            "start: \"A sunlit meadow, the keeper asleep in the grass\"",
            "start_image: ../../etc/x.png",
        )
    });
    assert_at_line(&out, p.yaml_line_of("start_image"));
    out.stderr_contains("../../etc/x.png");
}

#[test]
fn reference_symlink_pointing_outside_the_project() {
    let outside = tempfile::Builder::new()
        .suffix(".png")
        .tempfile()
        .expect("temp file");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/basic/references/hero.png"
        ),
        outside.path(),
    )
    .expect("copy a valid png outside the project");
    let (_p, out) = build_broken(|p| {
        std::os::unix::fs::symlink(outside.path(), p.path("references/elsewhere.png"))
            .expect("symlink")
    });
    out.stderr_contains("elsewhere.png")
        .stderr_contains("help:");
}

#[test]
fn missing_references_folder() {
    let (_p, out) = build_broken(|p| p.remove("references"));
    out.stderr_contains("references").stderr_contains("help:");
}

#[test]
fn corrupt_reference_image() {
    let (_p, out) = build_broken(|p| {
        let noise: Vec<u8> = (0u32..512)
            .flat_map(|i| blake3::hash(&i.to_le_bytes()).as_bytes()[..4].to_vec())
            .collect();
        p.write("references/broken.png", noise)
    });
    out.stderr_contains("broken.png").stderr_contains("help:");
}

#[test]
fn two_references_with_the_same_name() {
    let (_p, out) = build_broken(|p| {
        let jpg = p.read_bytes("references/lighthouse.jpg");
        p.write("references/hero.jpg", jpg)
    });
    out.stderr_contains("hero.png")
        .stderr_contains("hero.jpg")
        .stderr_contains("help:");
}

#[test]
fn unknown_target() {
    let p = Project::from_fixture("basic");
    p.ttv(&["build", "frame/arrival/start"]).success();
    let before = p.snapshot();

    p.ttv(&["build", "nosuch"])
        .code(2)
        .stderr_contains("nosuch");
    p.ttv(&["build", "storn"])
        .code(2)
        .stderr_contains("did you mean `storm`");
    p.ttv(&["explain", "frame/nosuch/end"])
        .code(2)
        .stderr_contains("frame/nosuch/end");
    assert!(
        before == p.snapshot(),
        "unknown targets touch nothing:\n{}",
        p.listing()
    );
}

#[test]
fn a_broken_project_that_was_never_built_gets_no_cache_folder() {
    let p = Project::from_fixture("basic");
    p.replace_in_yaml("duration_seconds: 1", "duration_seconds: 30");
    let out = p.ttv(&["build"]);
    out.code(2);
    out.check(
        !p.exists(".ttv") && !p.exists("build"),
        "a failed first build creates neither .ttv/ nor build/",
    );
}
