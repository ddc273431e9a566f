//! Decide before you pay (issue 8): the approval gate for video, approvals and pins from the
//! command line, and the budget.

use crate::google::Google;
use crate::support::fake_google::Route;
use crate::support::project::{Project, count, generated_ids, ids_with_status, node, set};

/// fixtures/basic in first-last mode with `require_approval`: each segment is made from its
/// shot's start and end frames.
fn gated() -> Project {
    let p = Project::from_fixture("basic");
    p.replace_in_yaml(
        "  duration_seconds: 1\n",
        "  duration_seconds: 1\n  mode: first-last\n  require_approval: true\n",
    );
    p
}

#[test]
fn segments_wait_for_approved_frames_and_a_reroll_needs_a_new_approval() {
    let p = gated();
    let out = p.ttv(&["--json", "build"]);
    out.success();
    let first = out.json();
    assert!(
        generated_ids(&first)
            .iter()
            .all(|id| id.starts_with("frame/")),
        "only frames are made: {first:#}"
    );
    assert_eq!(count(&first, "failed"), 0);
    let waiting = ids_with_status(&first, "waiting");
    assert!(waiting.contains("segment/arrival") && waiting.contains("final"));
    let reasons = node(&first, "segment/arrival")["reasons"].to_string();
    assert!(
        reasons.contains("frame/arrival/start is not approved"),
        "{reasons}"
    );
    assert!(first["cost_usd"] == 0.0 && first["waiting"].as_u64().unwrap() >= 6);

    p.ttv(&["approve", "frame/arrival/start", "frame/arrival/end"])
        .success();
    let plan = p.ttv(&["--json", "plan"]).success().json();
    assert_eq!(ids_with_status(&plan, "dirty"), set(&["segment/arrival"]));
    let second = p.build_json(&[]);
    assert_eq!(
        generated_ids(&second),
        set(&["segment/arrival"]),
        "{second:#}"
    );

    // A new take of an approved frame is a new picture: it needs its own approval.
    let third = p.build_json(&["--reroll", "frame/arrival/end"]);
    assert!(generated_ids(&third).contains("frame/arrival/end"));
    assert_eq!(
        node(&third, "segment/arrival")["status"],
        "waiting",
        "{third:#}"
    );

    // A rejected frame says so.
    p.ttv(&["reject", "frame/arrival/end"]).success();
    let explained = p
        .ttv(&["--json", "explain", "segment/arrival"])
        .success()
        .json();
    assert!(
        explained["reasons"]
            .to_string()
            .contains("frame/arrival/end was rejected"),
        "{explained:#}"
    );
    // Approving everything lets the rest through; approvals survive `ttv clean`.
    p.ttv(&["clean"]).success();
    p.ttv(&["approve", "frames"]).success();
    let last = p.build_json(&[]);
    assert!(last.get("waiting").is_none(), "nothing waits: {last:#}");
    assert_eq!(count(&last, "failed"), 0);
}

#[test]
fn pin_changes_exactly_one_line_of_ttv_yaml() {
    let p = Project::from_fixture("basic");
    p.build_json(&[]);
    p.build_json(&["--reroll", "frame/storm/end"]);
    let before = p.read("ttv.yaml");
    p.ttv(&["pin", "frame/storm/end", "1"]).success();
    let after = p.read("ttv.yaml");
    let (b, a): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    assert_eq!(a.len(), b.len() + 1, "{after}");
    let added: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).collect();
    assert_eq!(added, [&"    end_take: 1"], "{after}");
    // Pinning again changes that line, and only it.
    p.ttv(&["pin", "frame/storm/end", "2"]).success();
    let again = p.read("ttv.yaml");
    let diff: Vec<(&str, &str)> = after
        .lines()
        .zip(again.lines())
        .filter(|(x, y)| x != y)
        .collect();
    assert_eq!(diff, [("    end_take: 1", "    end_take: 2")]);
    let report = p.build_json(&[]);
    assert_eq!(node(&report, "frame/storm/end")["take"], 2);
    assert!(
        generated_ids(&report)
            .iter()
            .all(|id| !id.starts_with("frame/"))
    );
}

#[test]
fn an_estimate_over_the_budget_does_not_start() {
    let g = Google::new();
    let out = g.build(&["--max-cost", "1.00"]);
    out.code(2)
        .stderr_contains("more than the budget of $1.00 (--max-cost)")
        .stderr_contains("nothing was generated");
    assert_eq!(g.fake.paid_requests(), 0);
    // The same from ttv.yaml.
    g.p.replace_in_yaml(
        "name: google-project",
        "name: google-project\nbudget_usd: 1",
    );
    g.build(&[])
        .code(2)
        .stderr_contains("budget_usd in ttv.yaml");
    assert_eq!(g.fake.paid_requests(), 0);
}

#[test]
fn a_partial_build_makes_what_fits_and_skips_the_rest_with_the_reason() {
    let g = Google::new();
    // 3 frames at $0.067 and 3 segments at $0.80: $1.50 pays for the frames and one segment.
    let report = g
        .build(&["--max-cost", "1.50", "--partial"])
        .success()
        .json();
    let spent = report["cost_usd"].as_f64().unwrap();
    assert!(spent <= 1.50, "spent ${spent}: {report:#}");
    assert_eq!(g.fake.count(Route::VeoSubmit), 1, "{report:#}");
    let skipped = ids_with_status(&report, "skipped");
    assert_eq!(skipped.len(), 2, "{report:#}");
    for id in &skipped {
        let why = node(&report, id)["reasons"].to_string();
        assert!(why.contains("would pass the budget of $1.50"), "{why}");
    }
}
