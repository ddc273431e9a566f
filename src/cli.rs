//! The command line (DESIGN.md §9): parses arguments, runs a command, prints human text on
//! stderr and the `--json` object on stdout, and maps the outcome to the exit code contract.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::build::{self, BuildOptions};
use crate::error::{
    EXIT_INTERRUPTED, EXIT_NODE_FAILED, EXIT_OK, EXIT_USAGE, UsageError, exit_code_for,
};
use crate::plan::{Report, Session, Status};
use crate::progress::{Progress, Verbosity, emit, human_duration, say};
use crate::project::{self, Project};
use crate::store::{BuildLock, Store, Verdict, Wait};
use crate::{decide, fastpath, housekeeping};

#[derive(Debug, Parser)]
#[command(
    name = "ttv",
    version,
    about = "A make-like, content-addressed caching build tool for AI video",
    after_help = "Node ids: reference/auto, frame/<shot>/start, frame/<shot>/end, segment/<shot>, final.\nGroups: frames, segments, final. A shot id names all of its nodes."
)]
pub struct Cli {
    /// Project folder (default: the nearest folder upwards with a ttv.yaml).
    #[arg(short = 'C', global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print one JSON object on stdout (human text and progress stay on stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors and warnings.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print every node as it finishes, and more detail.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a project here: ttv.yaml, references/, .gitignore.
    Init,
    /// Make what is missing, reuse everything else.
    Build {
        /// Node ids, shot ids, or groups (frames, segments, final). Default: segments and final.
        targets: Vec<String>,
        /// Generations in flight at once, over all backends (each backend also has `jobs`).
        #[arg(short, long)]
        jobs: Option<usize>,
        /// Make a new take of this node (the old one is kept, and can be pinned).
        #[arg(long, value_name = "NODE")]
        reroll: Vec<String>,
        /// Make this node again even though it is cached (a generation becomes a new take).
        #[arg(long, value_name = "NODE")]
        force: Vec<String>,
        /// Show what would be generated, like `ttv plan`, and do nothing.
        #[arg(long)]
        dry_run: bool,
        /// Fail at once if another build holds the project, instead of waiting.
        #[arg(long)]
        no_wait: bool,
        /// The most this build may spend, in USD (default: `budget_usd` in ttv.yaml). A build
        /// estimated above it does not start.
        #[arg(long, value_name = "USD")]
        max_cost: Option<f64>,
        /// With a budget smaller than the estimate, make what fits and skip the rest.
        #[arg(long)]
        partial: bool,
        /// Count a model of unknown price as free against the budget (else it is over any).
        #[arg(long)]
        allow_unknown_cost: bool,
        /// Use the remote cache without writing to it (for CI): no uploads, no leases.
        #[arg(long, env = "TTV_REMOTE_READ_ONLY", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0, default_missing_value = "true", default_value = "false")]
        remote_read_only: bool,
    },
    /// The remote cache shared with a team and CI (`cache.remote` in ttv.yaml, or
    /// TTV_REMOTE_CACHE): what is where, and moving results between it and this machine.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Approve frames (node ids, shot ids or `frames`): with `video.require_approval`, a
    /// segment is made only from approved frames. An approval is of the frame's current take.
    Approve {
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Reject frames: their segments wait until they are rerolled (and approved) or approved.
    Reject {
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Pin a take of a frame or segment: writes `take:`, `start_take:` or `end_take:` under the
    /// shot in ttv.yaml (that one line; comments and layout stay).
    Pin { node: String, take: u32 },
    /// The storyboard in the browser: frames, takes, segments, prompts, statuses and costs, with
    /// approve, reject, pin, reroll and build buttons. Served on 127.0.0.1 with a random token in
    /// the printed URL.
    Review {
        /// Port to listen on (default: a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Open the page in the browser (xdg-open).
        #[arg(long)]
        open: bool,
        /// Write build/review.html instead (no server, no buttons), for sharing.
        #[arg(long = "static")]
        static_: bool,
    },
    /// What a build would generate, why, and what it would cost. No API call.
    Plan { targets: Vec<String> },
    /// Why a node would be generated (or that it is cached), field by field.
    Explain {
        node: String,
        /// Also print the node's recipe now and at its last build (what its key is made of).
        #[arg(long)]
        recipe: bool,
    },
    /// Check, for free, everything a build will need: credentials, project and location, each
    /// model (asked of Google with models.get), ffmpeg. Exit 0 when all is well, else 2.
    Doctor,
    /// The takes of a node, with when and where they are.
    Takes { node: String },
    /// Remove build/ (the cache stays, so the next build costs nothing).
    Clean {
        /// Also remove the cache (.ttv/): every paid generation in it is lost.
        #[arg(long)]
        cache: bool,
        /// Confirm `--cache`.
        #[arg(long)]
        yes: bool,
    },
    /// Drop cache entries that no current node (or any of its takes) reaches.
    Gc {
        /// Really drop them (without it, only shows what would go).
        #[arg(long)]
        yes: bool,
        /// Also drop them from the remote cache (never done without this flag).
        #[arg(long)]
        remote: bool,
    },
    /// Re-hash every blob in the cache; damaged ones are dropped so the next build remakes them.
    Verify,
    /// Draft the shots of a film from one prompt with a Gemini text model (cached like any
    /// generation: the same request again costs nothing) and print them as ttv.yaml's `shots:`.
    /// The preview backend drafts an offline placeholder.
    Storyboard {
        /// The film, in one prompt (default: `storyboard.prompt` in ttv.yaml).
        prompt: Option<String>,
        /// How many shots (default: from --seconds, else 4).
        #[arg(long, value_name = "N")]
        shots: Option<u32>,
        /// The film's length in seconds (default: the shots at `video.duration_seconds`).
        #[arg(long, value_name = "S")]
        seconds: Option<u32>,
        /// The text model (default: gemini-3.5-flash).
        #[arg(long, value_name = "MODEL")]
        model: Option<String>,
        /// gemini | preview (default: `storyboard.backend`, else `keyframes.backend`, else gemini).
        #[arg(long, value_name = "BACKEND")]
        backend: Option<String>,
        /// Put the shots in ttv.yaml (a new project when there is none).
        #[arg(long)]
        write: bool,
        /// With --write, replace the shots ttv.yaml has.
        #[arg(long)]
        force: bool,
        /// Draft another take instead of the cached one.
        #[arg(long)]
        reroll: bool,
        /// Use this take of the cached drafts (`ttv takes storyboard` lists them) instead of
        /// the latest.
        #[arg(long, value_name = "N", conflicts_with = "reroll")]
        take: Option<u32>,
    },
    /// Take over a project of the Python TTV pipeline: its pipeline_config.yaml and
    /// enhanced_prompt.json become ttv.yaml (here, or in -C DIR), its reference images
    /// references/. Lists every setting it could not map, and why.
    Import {
        /// The pipeline project: its folder or its pipeline_config.yaml.
        path: PathBuf,
        /// Replace an existing ttv.yaml.
        #[arg(long)]
        force: bool,
        /// Write the gemini and veo backends (default: preview, offline and free).
        #[arg(long)]
        google: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// What the local and the remote cache hold (results, blobs, bytes), and which nodes of the
    /// project each has.
    Status,
    /// Upload every local result the remote lacks (e.g. made while it was unreachable).
    Push,
    /// Download what the remote has for these targets (default: everything), e.g. before going
    /// offline. Generates nothing.
    Pull {
        targets: Vec<String>,
        /// Fail at once if a build holds the project, instead of waiting.
        #[arg(long)]
        no_wait: bool,
    },
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    let verbosity = if cli.quiet {
        Verbosity::Quiet
    } else if cli.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    match run(&cli, Progress::new(verbosity)) {
        Ok(code) => code,
        Err(e) => {
            say(&format!("ttv: error: {e:#}"));
            let db = || {
                project::find_root(cli.dir.as_deref())
                    .map_or_else(|_| ".ttv/ttv.db".into(), |r| r.join(".ttv/ttv.db"))
            };
            if let Some(help) = crate::store::advice(&e, db) {
                say(&format!("  help: {help}"));
            }
            exit_code_for(&e)
        }
    }
}

fn run(cli: &Cli, progress: Progress) -> Result<i32> {
    if let Command::Init = cli.command {
        let dir = match &cli.dir {
            Some(d) => d.clone(),
            None => std::env::current_dir()?,
        };
        housekeeping::init(&dir)?;
        progress.info(&format!(
            "started a project in {}: edit ttv.yaml, put reference images in references/, then run `ttv plan`",
            dir.display()
        ));
        return Ok(EXIT_OK);
    }
    if let Command::Storyboard { .. } = cli.command {
        return storyboard(cli, &progress);
    }
    if let Command::Import {
        path,
        force,
        google,
    } = &cli.command
    {
        return import(cli, path, *force, *google, &progress);
    }
    let root = project::find_root(cli.dir.as_deref())?;
    let load = || -> Result<Project> { Ok(Project::load(&root)?) };
    match &cli.command {
        Command::Init | Command::Storyboard { .. } | Command::Import { .. } => {
            unreachable!("handled above")
        }
        Command::Build {
            targets,
            jobs,
            reroll,
            force,
            dry_run,
            no_wait,
            max_cost,
            partial,
            allow_unknown_cost,
            remote_read_only,
        } => {
            if *dry_run {
                return plan(cli, load()?, targets, progress);
            }
            let opts = BuildOptions {
                targets: targets.clone(),
                jobs: *jobs,
                reroll: reroll.clone(),
                force: force.clone(),
                no_wait: *no_wait,
                max_cost: *max_cost,
                allow_unknown_cost: *allow_unknown_cost,
                partial: *partial,
                remote_read_only: *remote_read_only,
                remote_only: false,
            };
            if max_cost.is_some_and(|m| !(m.is_finite() && m >= 0.0)) {
                return Err(UsageError::new("--max-cost takes an amount in USD, 0 or more").into());
            }
            let started = Instant::now();
            if progress.verbosity() != Verbosity::Verbose
                && let Some(noop) = fastpath::check(&root, &opts)
            {
                return answer_noop(cli, &noop, started, &progress);
            }
            run_build(cli, &root, load, &opts, progress)
        }
        Command::Review {
            port,
            open,
            static_,
        } => {
            if *static_ {
                let path = crate::review::write_static(&root)?;
                emit(&path.display().to_string())?;
            } else {
                crate::review::serve(&root, *port, *open, &progress)?;
            }
            Ok(EXIT_OK)
        }
        Command::Plan { targets } => plan(cli, load()?, targets, progress),
        Command::Explain { node, recipe } => explain(cli, load()?, node, *recipe, progress),
        Command::Doctor => doctor(cli, &load()?, progress),
        Command::Pin { node, take } => {
            decide::pin(&load()?, node, *take, &progress)?;
            Ok(EXIT_OK)
        }
        Command::Approve { targets } => judge(cli, load()?, targets, Verdict::Approved, progress),
        Command::Reject { targets } => judge(cli, load()?, targets, Verdict::Rejected, progress),
        Command::Takes { node } if node == crate::storyboard::NODE_ID => {
            storyboard_takes(cli, &root, &progress)
        }
        Command::Takes { node } => takes(cli, load()?, node, progress),
        Command::Clean { cache, yes } => {
            housekeeping::clean(&root, *cache, *yes, &progress)?;
            Ok(EXIT_OK)
        }
        Command::Gc { yes, remote } => {
            fastpath::forget(&root);
            let project = load()?;
            let targets = crate::graph::all_targets(&project);
            let session = Session::open(project, &targets, &[], progress.clone())?;
            let _lock = BuildLock::acquire(&session.project.cache_dir(), Wait::Never, || {})?;
            if *remote {
                session.attach_remote(false)?;
            }
            housekeeping::gc(&session, *yes, *remote, cli.json)?;
            Ok(EXIT_OK)
        }
        Command::Cache { command } => match command {
            CacheCommand::Status => crate::cache_cmd::status(load()?, cli.json, progress),
            CacheCommand::Push => crate::cache_cmd::push(load()?, cli.json, progress),
            CacheCommand::Pull { targets, no_wait } => {
                let opts = BuildOptions {
                    targets: targets.clone(),
                    no_wait: *no_wait,
                    remote_only: true,
                    ..Default::default()
                };
                if remote_of(&load()?)?.is_none() {
                    return Err(no_remote().into());
                }
                run_build(cli, &root, load, &opts, progress)
            }
        },
        Command::Verify => {
            fastpath::forget(&root);
            let Some(store) = Store::open_existing(&root.join(".ttv"))? else {
                progress.info("no cache yet: nothing to verify");
                return Ok(EXIT_OK);
            };
            let _lock = BuildLock::acquire(&store.dir, Wait::Never, || {})?;
            let bad = housekeeping::verify(store, &progress, cli.json)?;
            Ok(if bad == 0 { EXIT_OK } else { EXIT_NODE_FAILED })
        }
    }
}

/// `ttv storyboard`: in the project found as for any command, else in the folder given (or
/// the current one), which `--write` makes a project.
fn storyboard(cli: &Cli, progress: &Progress) -> Result<i32> {
    let Command::Storyboard {
        prompt,
        shots,
        seconds,
        model,
        backend,
        write,
        force,
        reroll,
        take,
    } = &cli.command
    else {
        unreachable!("called for `ttv storyboard`")
    };
    let root = match (&cli.dir, project::find_root(cli.dir.as_deref())) {
        (_, Ok(root)) => root,
        (Some(dir), Err(_)) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        (None, Err(_)) => std::env::current_dir()?,
    };
    let req = crate::storyboard::Request {
        prompt: prompt.clone(),
        shots: *shots,
        seconds: *seconds,
        model: model.clone(),
        backend: backend.clone(),
        reroll: *reroll,
        take: *take,
    };
    let mut draft = crate::storyboard::draft(&root, &req, progress)?;
    if *write {
        crate::storyboard::write(&root, &mut draft, *force)?;
    }
    let seconds: u32 = draft.shots.iter().filter_map(|s| s.duration_seconds).sum();
    let cost = if draft.cost_unknown {
        "$? (the model has no known price)".to_string()
    } else {
        format!("${:.4}", draft.cost_usd)
    };
    progress.info(&format!(
        "storyboard: {} shot(s), {seconds} s, {} take {} by {} ({}), {cost}",
        draft.shots.len(),
        draft.status,
        draft.take,
        draft.backend,
        draft.model
    ));
    if cli.json {
        emit(&serde_json::to_string(&draft)?)?;
    } else if draft.written.is_none() {
        emit(crate::storyboard::shots_yaml(&draft.shots).trim_end())?;
    }
    if let Some(path) = &draft.written {
        progress.info(&format!(
            "wrote the shots to {}: `ttv plan` shows what a build makes, `ttv build` makes it",
            path.display()
        ));
    }
    Ok(EXIT_OK)
}

/// `ttv import PATH`: into -C DIR, else the current folder.
fn import(cli: &Cli, path: &Path, force: bool, google: bool, progress: &Progress) -> Result<i32> {
    let dest = match &cli.dir {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    let done = crate::import::import(path, &dest, force, google)?;
    if cli.json {
        emit(&serde_json::to_string(&done)?)?;
    }
    progress.info(&format!(
        "imported {} into {}: {} shot(s), {} reference image(s)",
        done.source.display(),
        done.written.display(),
        done.shots,
        done.references.len()
    ));
    for m in &done.mapped {
        let note = m
            .note
            .as_deref()
            .map_or(String::new(), |n| format!(" ({n})"));
        progress.info(&format!("  {} -> {}{note}", m.key, m.to));
    }
    if !done.unmapped.is_empty() {
        progress.info("not imported:");
        for u in &done.unmapped {
            progress.info(&format!("  {}: {}", u.key, u.reason));
        }
    }
    for n in &done.notes {
        progress.info(&format!("note: {n}"));
    }
    progress.info(if done.storyboard_request {
        "next: `ttv storyboard --write`, then `ttv plan`"
    } else {
        "next: `ttv plan` shows what a build makes, `ttv build` makes it"
    });
    Ok(EXIT_OK)
}

fn run_build(
    cli: &Cli,
    root: &Path,
    load: impl Fn() -> Result<Project>,
    opts: &BuildOptions,
    progress: Progress,
) -> Result<i32> {
    let report = build_project(root, load, opts, progress)?;
    if cli.json {
        emit(&serde_json::to_string(&report)?)?;
    }
    Ok(if report.interrupted {
        EXIT_INTERRUPTED
    } else if report.failed > 0 {
        EXIT_NODE_FAILED
    } else {
        EXIT_OK
    })
}

/// A build the fast path found nothing to do for: the report of the last one, which was the
/// same no-op.
fn answer_noop(
    cli: &Cli,
    noop: &fastpath::Noop,
    started: Instant,
    progress: &Progress,
) -> Result<i32> {
    if cli.json {
        emit(&noop.report_json)?;
    }
    let mut report = Report::from_nodes(Vec::new());
    report.cached = noop.cached;
    report.saved_usd = noop.saved_usd;
    print_build_summary(
        &report,
        started.elapsed().as_secs_f64(),
        Some("nothing changed since the last build"),
        progress,
    );
    Ok(EXIT_OK)
}

/// `ttv build` without the printing of its JSON: plans, takes the project's build lock, checks
/// the budget, builds, and says what happened on `progress`. The review page builds with it.
pub(crate) fn build_project(
    root: &Path,
    load: impl Fn() -> Result<Project>,
    opts: &BuildOptions,
    progress: Progress,
) -> Result<Report> {
    let started = Instant::now();
    let mut watch = fastpath::Watch::start(root);
    let mut rerolls = opts.reroll.clone();
    rerolls.extend(opts.force.iter().cloned());
    let open = |project| Session::open(project, &opts.targets, &rerolls, progress.clone());
    // Everything is checked before the lock is taken or `.ttv/` is created: a broken project
    // fails at once and touches nothing.
    let mut session = open(load()?)?;
    let mut preview = session.plan()?;
    session.check_tools(&preview)?;
    let mut waited = false;
    let _lock = BuildLock::acquire(
        &root.join(".ttv"),
        if opts.no_wait {
            Wait::NotAsked
        } else {
            Wait::Yes
        },
        || {
            waited = true;
            progress.info("another ttv build is running in this project; waiting for it to finish (Ctrl-C to stop, --no-wait to fail instead)")
        },
    )?;
    if waited || session.store.is_none() {
        if waited {
            // ttv.yaml, and what is cached, may have changed while this build waited.
            session = open(load()?)?;
        }
        session.ensure_store()?;
        preview = session.plan()?;
        session.check_tools(&preview)?;
    }
    session.attach_remote(opts.remote_read_only)?;
    // With a remote cache, what the local plan prices may come from it for free: each
    // generation is checked against the budget as it starts instead.
    if remote_of(&session.project)?.is_none() {
        check_budget(&session, &preview, opts)?;
    }
    let dirty = preview
        .nodes
        .iter()
        .filter(|n| n.status == Status::Dirty)
        .count();
    if dirty > 0 && preview.cost_usd > 0.0 {
        progress.info(&format!(
            "{dirty} node(s) to generate, estimated ${:.2}",
            preview.cost_usd
        ));
    }
    watch.inputs(&session);
    let total = session.needed.len() as u64;
    let session = session.with_progress(progress.clone().with_total(total));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // For the note after a reroll (the session goes to the build).
    let reroll_context =
        (!opts.reroll.is_empty()).then(|| (session.project.config.clone(), session.graph.clone()));
    let report = runtime.block_on(build::build(session, opts))?;
    // Recorded while the lock is still held: no other build changes what it vouches for.
    watch.finish(opts, &report, !progress.warned());
    print_build_summary(&report, started.elapsed().as_secs_f64(), None, &progress);
    for r in &opts.reroll {
        let Some((project_cfg, graph)) = &reroll_context else {
            break;
        };
        if let Some(n) = report.nodes.iter().find(|n| &n.id == r)
            && n.status == Status::Generated
            && let Some(i) = graph.index_of(r)
            && let Some(pin) = graph.nodes[i].kind().pin(project_cfg)
        {
            progress.info(&format!(
                "{r}: made take {} (earlier takes are kept). To pin a take, set `{}: N` under shot `{}` in ttv.yaml; `ttv takes {r}` lists them",
                n.take.unwrap_or(0),
                pin.field,
                project_cfg.shots[pin.shot].id
            ));
        }
    }
    Ok(report)
}

/// The remote cache URL the project uses, if any.
fn remote_of(project: &Project) -> Result<Option<String>> {
    crate::plan::remote_url(project)
}

fn no_remote() -> UsageError {
    UsageError::new(
        "no remote cache is configured: set `cache: {remote: s3://bucket/prefix}` in ttv.yaml, or TTV_REMOTE_CACHE",
    )
}

/// A build estimated over its budget does not start (unless `--partial`); neither does one
/// with generations of unknown price, unless they are allowed.
fn check_budget(session: &Session, preview: &Report, opts: &BuildOptions) -> Result<()> {
    let Some(limit) = opts.max_cost.or(session.project.config.budget_usd) else {
        return Ok(());
    };
    let source = if opts.max_cost.is_some() {
        "--max-cost".to_string()
    } else {
        "budget_usd in ttv.yaml".to_string()
    };
    if preview.cost_unknown > 0 && !opts.allow_unknown_cost && !opts.partial {
        return Err(UsageError::new(format!(
            "{} node(s) to generate have no known price, and the budget is ${limit:.2} ({source}): \
             give their price under `prices:`, or pass --allow-unknown-cost",
            preview.cost_unknown
        ))
        .into());
    }
    if preview.cost_usd > limit + 1e-9 && !opts.partial {
        return Err(UsageError::new(format!(
            "the build is estimated at ${:.2}, more than the budget of ${limit:.2} ({source}); \
             nothing was generated: raise the budget, build fewer targets (e.g. `ttv build \
             frames`), or pass --partial to make what fits",
            preview.cost_usd
        ))
        .into());
    }
    Ok(())
}

/// `ttv approve` / `ttv reject`: records the verdict on the current take of each frame named.
fn judge(
    cli: &Cli,
    project: Project,
    targets: &[String],
    verdict: Verdict,
    progress: Progress,
) -> Result<i32> {
    let done = decide::judge(project, targets, verdict, &progress)?;
    if cli.json {
        emit(&json!({ "frames": done }).to_string())?;
    }
    Ok(EXIT_OK)
}

fn print_build_summary(report: &Report, seconds: f64, note: Option<&str>, progress: &Progress) {
    let failed: Vec<_> = report
        .nodes
        .iter()
        .filter(|n| n.status == Status::Failed)
        .collect();
    let mut line = format!("{} generated, {} cached", report.generated, report.cached);
    if report.failed > 0 {
        line += &format!(", {} failed", report.failed);
    }
    if report.skipped > 0 {
        line += &format!(", {} skipped", report.skipped);
    }
    if report.waiting > 0 {
        line += &format!(", {} waiting for approval", report.waiting);
    }
    line += &format!(" in {seconds:.1}s");
    if let Some(note) = note {
        line += &format!(", {note}");
    }
    line += &format!(
        "; spent ${:.2}, saved ${:.2}",
        report.cost_usd, report.saved_usd
    );
    if progress.verbosity() != Verbosity::Quiet || !failed.is_empty() {
        progress.println(&format!("ttv: {line}"));
    }
    for f in failed {
        progress.println(&format!(
            "ttv: error: {} failed: {}",
            f.id,
            f.error.as_deref().unwrap_or("unknown error")
        ));
    }
    if report.failed > 0 {
        progress.println(
            "ttv: nodes that did not depend on the failure were finished and cached; fix the cause and run `ttv build` again",
        );
    }
    if report.interrupted {
        progress.println(&format!(
            "ttv: interrupted: what finished is cached; {} node(s) not started; run `ttv build` again to continue",
            report.skipped
        ));
    }
}

fn plan(cli: &Cli, project: Project, targets: &[String], progress: Progress) -> Result<i32> {
    let session = Session::open(project, targets, &[], progress.clone())?;
    let report = session.plan()?;
    session.check_tools(&report)?;
    if cli.json {
        emit(&serde_json::to_string(&report)?)?;
    }
    if progress.verbosity() == Verbosity::Quiet {
        return Ok(EXIT_OK);
    }
    let dirty: Vec<_> = report
        .nodes
        .iter()
        .filter(|n| n.status == Status::Dirty)
        .collect();
    for n in &report.nodes {
        if n.status == Status::Dirty {
            let cost = if n.cost_unknown {
                "  $? (no known price)".to_string()
            } else if n.cost_usd > 0.0 {
                format!("  ${:.2}", n.cost_usd)
            } else {
                String::new()
            };
            progress.println(&format!(
                "  generate {:<28} {}{cost}",
                n.id,
                n.reasons.join("; ")
            ));
        } else if n.status == Status::Waiting {
            progress.println(&format!("  waiting  {:<28} {}", n.id, n.reasons.join("; ")));
        } else if progress.verbosity() == Verbosity::Verbose {
            progress.println(&format!("  cached   {}", n.id));
        }
    }
    let secs = report.estimated_seconds.unwrap_or(0.0);
    let unknown = if report.cost_unknown > 0 {
        format!(
            " plus {} node(s) of unknown price (set their price under `prices:`)",
            report.cost_unknown
        )
    } else {
        String::new()
    };
    progress.println(&format!(
        "ttv: {} to generate, {} cached; estimated ${:.2}{unknown} and about {}",
        dirty.len(),
        report.cached,
        report.cost_usd,
        human_duration(secs)
    ));
    Ok(EXIT_OK)
}

fn doctor(cli: &Cli, project: &Project, progress: Progress) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(crate::doctor::run(project));
    if cli.json {
        emit(&serde_json::to_string(&report)?)?;
    }
    for c in &report.checks {
        progress.println(&format!(
            "{} {}: {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        ));
    }
    progress.println(if report.ok {
        "ttv: doctor: everything a build needs is in place"
    } else {
        "ttv: doctor: fix the FAIL lines above before building (no money was spent)"
    });
    Ok(if report.ok { EXIT_OK } else { EXIT_USAGE })
}

fn explain(
    cli: &Cli,
    project: Project,
    node: &str,
    show_recipe: bool,
    progress: Progress,
) -> Result<i32> {
    let session = Session::open(project, &[node.to_string()], &[], progress.clone())?;
    let report = session.plan()?;
    let Some(n) = report.nodes.iter().find(|n| n.id == node) else {
        return Err(UsageError::new(format!(
            "`{node}` is not a node id (a shot id or group names several nodes: explain one of them; `ttv plan -v` lists them)"
        ))
        .into());
    };
    // The recipe now (known when its inputs are) and at the node's last build.
    let recipes = show_recipe.then(|| session.recipes_of(node)).transpose()?;
    if cli.json {
        let mut out = json!({"id": n.id, "status": n.status, "key": n.key, "take": n.take, "reasons": n.reasons});
        if let Some((now, before)) = &recipes {
            out["recipe"] = json!({"now": now, "last_build": before});
        }
        emit(&out.to_string())?;
    }
    if let Some((now, before)) = &recipes {
        let show = |r: &Option<serde_json::Value>| {
            r.as_ref().map_or("(not known)".to_string(), |v| {
                serde_json::to_string_pretty(v).unwrap_or_default()
            })
        };
        progress.println(&format!("recipe now:\n{}", show(now)));
        progress.println(&format!("recipe at the last build:\n{}", show(before)));
    }
    if n.status == Status::Cached {
        progress.println(&format!(
            "{} is cached (take {}, key {})",
            n.id,
            n.take.unwrap_or(1),
            n.key.as_deref().map_or("", |k| &k[..16])
        ));
    } else if n.status == Status::Waiting {
        progress.println(&format!("{} waits for approval:", n.id));
        for r in &n.reasons {
            progress.println(&format!("  - {r}"));
        }
    } else {
        progress.println(&format!("{} will be generated:", n.id));
        for r in &n.reasons {
            progress.println(&format!("  - {r}"));
        }
    }
    Ok(EXIT_OK)
}

fn takes(cli: &Cli, project: Project, node: &str, progress: Progress) -> Result<i32> {
    let session = Session::open(project, &[node.to_string()], &[], progress.clone())?;
    let report = session.plan()?;
    let Some(n) = report.nodes.iter().find(|n| n.id == node) else {
        return Err(UsageError::new(format!("`{node}` is not a node id")).into());
    };
    let Some(store) = &session.store else {
        progress.info(&format!("{node} has no takes yet (nothing was built)"));
        if cli.json {
            emit(&json!({"node": node, "takes": []}).to_string())?;
        }
        return Ok(EXIT_OK);
    };
    let current = n.key.clone();
    // With its inputs known, the takes are those of the current recipe; otherwise every
    // generation ever recorded for the node.
    let actions = match &current {
        Some(key) => match store.action(key)? {
            Some(a) => store.takes(&a.base_key)?,
            None => store.actions_of_node(node)?,
        },
        None => store.actions_of_node(node)?,
    };
    print_takes(
        cli,
        node,
        &actions,
        current.as_ref(),
        store,
        &session.project.root,
        &progress,
    )
}

/// `ttv takes storyboard`: the drafts of the storyboard ttv.yaml's `storyboard:` asks for (or,
/// without one, every draft made here); the current one is the latest.
fn storyboard_takes(cli: &Cli, root: &Path, progress: &Progress) -> Result<i32> {
    let node = crate::storyboard::NODE_ID;
    let Some(store) = Store::open_existing(&root.join(project::CACHE_DIR))? else {
        progress.info("the storyboard has no takes yet (`ttv storyboard` drafts one)");
        if cli.json {
            emit(&json!({"node": node, "takes": []}).to_string())?;
        }
        return Ok(EXIT_OK);
    };
    let (actions, current) = crate::storyboard::takes(root, &store)?;
    print_takes(
        cli,
        node,
        &actions,
        current.as_ref(),
        &store,
        root,
        progress,
    )
}

/// Lists `actions`, the takes of `node`, marking the `current` key.
fn print_takes(
    cli: &Cli,
    node: &str,
    actions: &[crate::store::Action],
    current: Option<&String>,
    store: &Store,
    root: &Path,
    progress: &Progress,
) -> Result<i32> {
    let file_of = |a: &crate::store::Action| {
        let path = store.blob_path(&a.blob);
        path.strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string()
    };
    let rows: Vec<_> = actions
        .iter()
        .map(|a| {
            json!({
                "take": a.take,
                "key": a.key,
                "blob": a.blob,
                "created_at": a.created_at,
                "backend": a.backend,
                "cost_usd": a.cost_usd,
                "current": Some(&a.key) == current,
                "file": file_of(a),
                "provenance": a.provenance.as_deref()
                    .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok()),
            })
        })
        .collect();
    if cli.json {
        emit(&json!({"node": node, "takes": rows}).to_string())?;
    }
    if actions.is_empty() {
        progress.println(&format!("{node} has no takes yet"));
    }
    for a in actions {
        let mark = if Some(&a.key) == current { "*" } else { " " };
        progress.println(&format!(
            "{mark} take {:<3} {}  {:<14} ${:.2}  {}",
            a.take,
            housekeeping::format_time(a.created_at),
            a.backend,
            a.cost_usd,
            file_of(a)
        ));
        if let Some(p) = a
            .provenance
            .as_deref()
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        {
            let text = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let mut line = format!("           model {}", a.model);
            if let Some(v) = text("model_version") {
                line += &format!(" (Google ran {v})");
            }
            if let Some(id) = text("response_id") {
                line += &format!(", id {id}");
            }
            if let Some(params) = p.get("params").filter(|v| !v.is_null()) {
                line += &format!(", sent {params}");
            }
            progress.println(&line);
        }
    }
    Ok(EXIT_OK)
}
