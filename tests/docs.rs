//! The documentation that runs: every shell block of README.md and
//! docs/*.md that a reader is meant to type is run here, on the embedded
//! backends (or on the emulators where the block says so), and checked for
//! its exit status and the shape of the output it shows; the `bqdrain`
//! command lines of the blocks that are not run are checked against
//! `--help`. A renamed flag then fails here instead of a reader. The
//! convention is in docs/testing.md, "Documentation that runs".

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use common::BIN;

/// Fence languages of shell blocks; other blocks (text, json) are not run.
const SHELL: &[&str] = &["sh", "bash", "shell", "console"];

/// The comment before a block's fence that says what to do with it:
/// `<!-- docs-test: KIND -->`.
const MARKER_PREFIX: &str = "<!-- docs-test:";
/// Marks a sh block run after the page's previous run block, in its directory.
const CONTINUES: &str = "continues";

/// What the test does with a block.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// A shell block without a marker: run on the embedded backends.
    Run,
    /// `emulators`: run with the emulator stack's `*_EMULATOR_HOST` set.
    Emulators,
    /// `ci`: a command `.ci/run` runs itself (the test suite cannot run
    /// itself); checked to be in `.ci/run`, verbatim.
    Ci,
    /// `illustration`: not run (a real project, a command that never ends);
    /// its `bqdrain` and `bqdrain-producer` commands are checked against
    /// `--help`.
    Illustration,
    /// `output`, on a text block: what the last block above that is run
    /// prints.
    Output,
}

impl Kind {
    fn of(marker: &str, place: &str) -> Kind {
        match marker {
            "emulators" => Kind::Emulators,
            "ci" => Kind::Ci,
            "illustration" => Kind::Illustration,
            "output" => Kind::Output,
            other => panic!(
                "{place}: unknown marker `docs-test: {other}`; use emulators, ci, illustration or output"
            ),
        }
    }

    fn is_run(self) -> bool {
        matches!(self, Kind::Run | Kind::Emulators)
    }
}

/// A fenced block of a page.
struct Block {
    /// `docs/operating.md:17`, the fence's line.
    place: String,
    lang: String,
    kind: Kind,
    /// Marked `docs-test: continues`: run after the page's previous run
    /// block, in its directory (a walk-through's later steps).
    continues: bool,
    body: String,
}

impl Block {
    fn is_console(&self) -> bool {
        self.lang == "console"
    }
}

/// One command of a block and the output lines it shows (patterns).
struct Step {
    command: String,
    expected: Vec<String>,
}

/// A runnable block with its steps.
struct Runnable {
    place: String,
    steps: Vec<Step>,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page of docs/, as paths relative to the repository.
fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .map(|path| path.strip_prefix(repo()).unwrap().to_path_buf())
        .collect();
    pages.sort();
    pages.insert(0, PathBuf::from("README.md"));
    pages
}

fn read(page: &Path) -> String {
    std::fs::read_to_string(repo().join(page)).unwrap()
}

/// The info string (language) of a line that opens or closes a fenced
/// block: three backticks, then no backtick (CommonMark's rule).
fn fence(line: &str) -> Option<&str> {
    line.trim_start()
        .strip_prefix("```")
        .filter(|info| !info.contains('`'))
}

/// The fenced blocks of a page, each with the kind its marker gives.
fn blocks(page: &Path) -> Vec<Block> {
    let text = read(page);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = fence(lines[i]) else {
            i += 1;
            continue;
        };
        let place = format!("{}:{}", page.display(), i + 1);
        let end = (i + 1..lines.len())
            .find(|&j| fence(lines[j]).is_some())
            .unwrap_or_else(|| panic!("{place}: the block is never closed"));
        let marker = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().strip_prefix(MARKER_PREFIX))
            .and_then(|rest| rest.strip_suffix("-->"))
            .map(str::trim);
        let lang = lang.trim().to_string();
        let shell = SHELL.contains(&lang.as_str());
        let continues = marker == Some(CONTINUES);
        let kind = marker
            .filter(|_| !continues)
            .map_or(Kind::Run, |m| Kind::of(m, &place));
        match (shell, kind) {
            (true, Kind::Output) => panic!("{place}: `output` marks a text block, not a shell one"),
            (false, Kind::Run | Kind::Output) => {}
            (false, _) => panic!("{place}: a `{lang}` block is never run; only shell blocks ({SHELL:?}) take this marker"),
            (true, _) => {}
        }
        let kind = if shell || kind == Kind::Output {
            kind
        } else {
            Kind::Illustration
        };
        if continues && (!shell || lang == "console") {
            panic!("{place}: `continues` marks a sh block that follows another run block");
        }
        out.push(Block {
            place,
            lang,
            kind,
            continues,
            body: lines[i + 1..end].join("\n"),
        });
        i = end + 1;
    }
    out
}

/// Every block of every page.
fn all_blocks() -> Vec<Block> {
    pages().iter().flat_map(|page| blocks(page)).collect()
}

/// The runnable blocks of one kind, with their steps: a console block's `$`
/// lines and the lines after each, a shell block's whole body and the text
/// block marked as its output.
fn runnable(kind: Kind) -> Vec<Runnable> {
    let mut out: Vec<Runnable> = Vec::new();
    for page in pages() {
        // The last run block above: its (index in `out`, step) when it is
        // of `kind`.
        let mut last_run: Option<Option<(usize, usize)>> = None;
        // The page's last runnable of `kind`, which a `continues` block joins.
        let mut page_last: Option<usize> = None;
        for block in blocks(&page) {
            if block.kind == Kind::Output {
                let owner = last_run.take().unwrap_or_else(|| {
                    panic!(
                        "{}: an output block with no shell block run above it (console blocks show their output inline)",
                        block.place
                    )
                });
                if let Some((index, step)) = owner {
                    out[index].steps[step].expected = lines_of(&block.body);
                }
                continue;
            }
            if !block.kind.is_run() {
                continue;
            }
            last_run = (!block.is_console()).then_some(None);
            if block.kind != kind {
                continue;
            }
            let mut steps = if block.is_console() {
                console_steps(&block)
            } else {
                vec![Step {
                    command: block.body.clone(),
                    expected: Vec::new(),
                }]
            };
            for step in &mut steps {
                step.command = rewrite_cargo_run(&step.command, &block.place);
            }
            if block.continues {
                let index = page_last.unwrap_or_else(|| {
                    panic!(
                        "{}: `continues` with no run block above it on the page",
                        block.place
                    )
                });
                out[index].steps.extend(steps);
                last_run = Some(Some((index, out[index].steps.len() - 1)));
                continue;
            }
            if !block.is_console() {
                last_run = Some(Some((out.len(), 0)));
            }
            page_last = Some(out.len());
            out.push(Runnable {
                place: block.place,
                steps,
            });
        }
    }
    out
}

/// A shown output's lines, trailing spaces left out.
fn lines_of(text: &str) -> Vec<String> {
    text.lines().map(|l| l.trim_end().to_string()).collect()
}

/// A console block's steps: a `$ ` line (continued by lines after a
/// trailing `\`) is a command; the lines up to the next one, its output.
fn console_steps(block: &Block) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut continued = false;
    for line in block.body.lines() {
        if continued {
            let step = steps.last_mut().unwrap();
            step.command.push('\n');
            step.command.push_str(line);
        } else if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                command: command.to_string(),
                expected: Vec::new(),
            });
        } else {
            steps
                .last_mut()
                .unwrap_or_else(|| {
                    panic!("{}: a console block starts with `$ COMMAND`", block.place)
                })
                .expected
                .push(line.trim_end().to_string());
        }
        continued = line.ends_with('\\');
    }
    steps
}

/// `cargo run [flags] -- ARGS` runs `bqdrain ARGS` (the binary this test
/// was built with: no second build); any other cargo command belongs in a
/// block marked `ci` or `illustration`.
fn rewrite_cargo_run(script: &str, place: &str) -> String {
    let lines: Vec<String> = script
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("cargo run") {
                match trimmed.split_once(" -- ") {
                    Some((_, args)) => format!("bqdrain {args}"),
                    None => "bqdrain".to_string(),
                }
            } else if trimmed.starts_with("cargo ") {
                panic!("{place}: `{trimmed}` builds: mark the block `ci` or `illustration`")
            } else {
                line.to_string()
            }
        })
        .collect();
    lines.join("\n")
}

/// Whether an output line matches a shown one: `…` stands for any text, the
/// rest is literal; trailing spaces do not count.
fn matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.trim_end().split('…').collect();
    let line = line.trim_end();
    let Some(mut rest) = line.strip_prefix(parts[0]) else {
        return false;
    };
    let Some((last, middle)) = parts[1..].split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Every shown line matches a line of the output, in order; other output
/// lines may come between. A line of `…` alone shows that some are left out.
fn check_output(expected: &[String], stdout: &str) -> Result<(), String> {
    let mut lines = stdout.lines();
    for want in expected
        .iter()
        .filter(|l| !l.trim().is_empty() && l.trim() != "…")
    {
        if !lines.any(|line| matches(want, line)) {
            return Err(format!(
                "no output line matches `{want}` (after the lines matched before it)"
            ));
        }
    }
    Ok(())
}

/// The directory holding both binaries: `bqdrain` (this package's) and
/// `bqdrain-producer`, which `cargo test --workspace` builds beside it.
fn bin_dir() -> PathBuf {
    let dir = Path::new(BIN).parent().unwrap().to_path_buf();
    assert!(
        dir.join("bqdrain-producer").is_file(),
        "no bqdrain-producer beside {BIN}: run `cargo test --workspace` (or `cargo build --workspace` first)"
    );
    dir
}

/// Runs each step of a block in one fresh directory, with both binaries on
/// `PATH`, no `BQDRAIN_*` variable of the caller's, and `env`.
fn run(block: &Runnable, env: &[(&str, String)]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::join_paths(
        std::iter::once(bin_dir()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    for step in &block.steps {
        let mut command = Command::new("bash");
        command
            .args(["-euo", "pipefail", "-c", &step.command])
            .current_dir(dir.path())
            .env("PATH", &path)
            .stdin(Stdio::null());
        for (name, _) in std::env::vars() {
            if name.starts_with("BQDRAIN_") || name.ends_with("_EMULATOR_HOST") {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let out = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let failed = |why: String| {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!(
                "{}: `{}`: {why}\n--- stdout:\n{stdout}--- stderr (last lines):\n{}",
                block.place,
                step.command,
                tail.join("\n")
            )
        };
        if !out.status.success() {
            return Err(failed(format!("exited with {}", out.status)));
        }
        check_output(&step.expected, &stdout).map_err(failed)?;
    }
    Ok(())
}

fn run_all(kind: Kind, env: &[(&str, String)]) {
    let blocks = runnable(kind);
    assert!(
        !blocks.is_empty(),
        "no {kind:?} block found: the parser lost them"
    );
    let failures: Vec<String> = blocks.iter().filter_map(|b| run(b, env).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} block(s) failed:\n\n{}",
        failures.len(),
        blocks.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_blocks_on_the_embedded_backends_run_and_show_their_output() {
    run_all(Kind::Run, &[]);
}

#[test]
fn the_blocks_for_the_emulators_run_against_them() {
    let stack = common::gcp::emulators();
    // The blocks' own set-up calls (datasets, buckets) are not bqdrain's, so
    // they go to the emulators, not through the permission table's proxies.
    let direct = |name: &str, proxied: &String| stack.direct.get(name).unwrap_or(proxied).clone();
    run_all(
        Kind::Emulators,
        &[
            ("PUBSUB_EMULATOR_HOST", stack.pubsub.clone()),
            (
                "BIGQUERY_EMULATOR_HOST",
                direct("bigquery", &stack.bigquery),
            ),
            ("STORAGE_EMULATOR_HOST", direct("storage", &stack.storage)),
        ],
    );
}

/// Splits a shell line into words (quotes and backslashes as the shell
/// reads them, no expansion), up to a comment.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                w.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                w.extend(chars.by_ref().take_while(|&c| c != '"'));
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            '#' if word.is_none() => break,
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// The `bqdrain` and `bqdrain-producer` commands of a block, as words.
fn invocations(block: &Block) -> Vec<Vec<String>> {
    let script = if block.is_console() {
        console_steps(block)
            .into_iter()
            .map(|step| step.command)
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        block.body.clone()
    };
    let script = script.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in script.lines() {
        let words = words(line);
        for command in words.split(|w| ["&&", "||", "|", ";"].contains(&w.as_str())) {
            let starts = command.first().map(String::as_str);
            if matches!(starts, Some("bqdrain" | "bqdrain-producer")) {
                out.push(command.to_vec());
            }
        }
    }
    out
}

/// The long flags a command's `--help` lists, or why there are none.
type Flags = Result<BTreeSet<String>, String>;

/// The flags of `PROGRAM [SUBCOMMAND]`, asked once.
fn flags_of(program: &str, subcommand: Option<&str>) -> Flags {
    static CACHE: Mutex<BTreeMap<String, Flags>> = Mutex::new(BTreeMap::new());
    let key = format!("{program} {}", subcommand.unwrap_or(""));
    CACHE
        .lock()
        .unwrap()
        .entry(key.clone())
        .or_insert_with(|| {
            let out = Command::new(bin_dir().join(program))
                .args(subcommand)
                .arg("--help")
                .output()
                .unwrap();
            if !out.status.success() {
                return Err(format!(
                    "`{} --help` fails: no such command",
                    key.trim_end()
                ));
            }
            let help = String::from_utf8_lossy(&out.stdout);
            Ok(help
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .filter(|w| w.starts_with("--") && w.len() > 2)
                .map(str::to_string)
                .collect())
        })
        .clone()
}

/// What is wrong with one command line: an unknown subcommand or flag.
fn check_flags(command: &[String]) -> Result<(), String> {
    let program = command[0].as_str();
    let (subcommand, args) = match program {
        // A word in capitals (`bqdrain ARGS`) stands for any.
        "bqdrain" => match command.get(1) {
            Some(sub) if sub.starts_with(|c: char| c.is_ascii_lowercase()) => {
                (Some(sub.as_str()), &command[2..])
            }
            _ => (None, &command[1..]),
        },
        _ => (None, &command[1..]),
    };
    let known = flags_of(program, subcommand)?;
    let unknown: Vec<&str> = args
        .iter()
        .filter(|a| a.starts_with("--") && a.len() > 2)
        .map(|a| {
            let end = a[2..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(a.len(), |at| at + 2);
            &a[..end]
        })
        .filter(|flag| !known.contains(*flag))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!("unknown flag(s) {unknown:?}"))
    }
}

/// The code spans of a page's prose (a run of backticks up to the next run
/// of as many) that start with `bqdrain ` or `bqdrain-producer `, as words:
/// the synopses' brackets, bars and ellipses read as spaces.
fn inline_commands(text: &str) -> Vec<(String, Vec<String>)> {
    let prose = prose(text).join("\n");
    let mut out = Vec::new();
    let mut rest = prose.as_str();
    while let Some(open) = rest.find('`') {
        let ticks = rest[open..].len() - rest[open..].trim_start_matches('`').len();
        let fence = &rest[open..open + ticks];
        let body = &rest[open + ticks..];
        let Some(close) = body.find(fence) else {
            break;
        };
        let span = &body[..close];
        if span.starts_with("bqdrain ") || span.starts_with("bqdrain-producer ") {
            let words = span
                .replace(['[', ']', '|', '\\', '…'], " ")
                .split_whitespace()
                .map(str::to_string)
                .collect();
            out.push((span.replace('\n', " "), words));
        }
        rest = &body[close + ticks..];
    }
    out
}

/// Fails on each command (where it is, as shown, as words) whose flags do
/// not exist, and when fewer than `least` are found (the parser lost them).
fn assert_flags_exist(commands: Vec<(String, String, Vec<String>)>, least: usize) {
    assert!(
        commands.len() >= least,
        "only {} bqdrain commands found: the parser lost them",
        commands.len()
    );
    let wrong: Vec<String> = commands
        .iter()
        .filter_map(|(place, shown, words)| {
            check_flags(words)
                .err()
                .map(|why| format!("{place}: `{shown}`: {why}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_bqdrain_command_in_the_prose_uses_flags_that_exist() {
    let commands = pages()
        .iter()
        .flat_map(|page| {
            inline_commands(&read(page))
                .into_iter()
                .map(|(span, words)| (page.display().to_string(), span, words))
        })
        .collect();
    assert_flags_exist(commands, 30);
}

#[test]
fn every_bqdrain_command_shown_uses_flags_that_exist() {
    let commands = all_blocks()
        .iter()
        .filter(|b| SHELL.contains(&b.lang.as_str()))
        .flat_map(|block| {
            invocations(block)
                .into_iter()
                .map(|words| (block.place.clone(), words.join(" "), words))
        })
        .collect();
    assert_flags_exist(commands, 10);
}

#[test]
fn the_blocks_marked_ci_are_what_ci_runs() {
    let ci = read(Path::new(".ci/run"));
    let blocks: Vec<Block> = all_blocks()
        .into_iter()
        .filter(|b| b.kind == Kind::Ci)
        .collect();
    assert!(!blocks.is_empty(), "no block marked ci");
    for block in blocks {
        for line in block
            .body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            assert!(
                ci.lines().any(|l| l.contains(line)),
                "{}: `{line}` is not in .ci/run: CI must run what the block says it runs",
                block.place
            );
        }
    }
}

/// A heading's anchor as GitHub makes it: lower case, punctuation dropped,
/// spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings (outside code blocks).
fn anchors(page: &Path) -> BTreeSet<String> {
    prose(&read(page))
        .iter()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// A page's lines outside fenced blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut inside = false;
    text.lines()
        .filter(|line| {
            if fence(line).is_some() {
                inside = !inside;
                return false;
            }
            !inside
        })
        .collect()
}

/// The targets of a line's Markdown links and images: `](TARGET)`.
fn link_targets(line: &str) -> Vec<&str> {
    line.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target))
        .collect()
}

#[test]
fn every_link_of_the_pages_leads_somewhere() {
    let mut wrong = Vec::new();
    for page in pages() {
        let text = read(&page);
        for target in prose(&text).into_iter().flat_map(link_targets) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let file = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !repo().join(&file).exists() {
                wrong.push(format!(
                    "{}: `{target}`: no file {}",
                    page.display(),
                    file.display()
                ));
            } else if !fragment.is_empty() && !anchors(&file).contains(fragment) {
                wrong.push(format!(
                    "{}: `{target}`: no heading with that anchor",
                    page.display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_readme_opens_with_the_two_commands_links_every_page_and_stays_short() {
    let readme = read(Path::new("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines < 200,
        "README.md has {lines} lines: move text into docs/"
    );
    let first: Vec<String> = blocks(Path::new("README.md"))
        .into_iter()
        .take(2)
        .map(|b| b.body)
        .collect();
    assert_eq!(
        first,
        [
            "cargo run --release -- demo",
            "cargo test --workspace --locked"
        ],
        "README.md opens with the demo and the test command"
    );
    for page in pages().iter().skip(1) {
        let name = page.file_name().unwrap().to_str().unwrap();
        assert!(
            readme.contains(&format!("](docs/{name}")),
            "README.md does not link {}",
            page.display()
        );
    }
}
