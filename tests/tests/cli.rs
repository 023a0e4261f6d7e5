//! The `referral-engine` command line's read side, run as a separate process:
//! the inbox, active and archive lists, a referral's view and timeline and a
//! partner's history against a test server; the `projections` operator
//! commands against the server and offline on a data directory.
//!
//! The binary under test is `referral-engine-under-test` (`src/bin/`), the
//! same `main` as `referral-engine`, built by cargo with this test. Set
//! `REFERRAL_ENGINE_BIN` to run another build of `referral-engine` instead.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use referral_commands::Role;
use referral_infra::grpc::pb;
use referral_tests::{accept_request, date, money, profile_request, rfi_request, Client, TestServer};
use serde_json::Value;

const A: &str = "contoso";
const B: &str = "northwind";
/// The longest one CLI run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn binary() -> PathBuf {
    let path = match std::env::var_os("REFERRAL_ENGINE_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_referral-engine-under-test")),
    };
    assert!(
        path.is_file(),
        "the CLI binary {} does not exist; build it with `cargo build -p referral-tests --bins` \
         (or unset REFERRAL_ENGINE_BIN)",
        path.display()
    );
    path
}

/// What one run of the CLI did.
struct Run {
    args: Vec<String>,
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "referral-engine {}\nexit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }

    /// The run's stdout; panics (showing the run) unless it succeeded.
    fn ok(self) -> String {
        assert!(self.success, "the command failed:\n{}", self.describe());
        self.stdout
    }

    /// The run's stdout as JSON; panics unless it succeeded and printed JSON.
    fn json(self) -> Value {
        let description = self.describe();
        let stdout = self.ok();
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{description}"))
    }

    /// Panics unless the run failed.
    fn failed(self) -> Run {
        assert!(!self.success, "the command should have failed:\n{}", self.describe());
        self
    }
}

/// Runs the CLI with `args`, none of the caller's REFERRAL_ENGINE_* settings
/// and no terminal.
async fn cli<S: AsRef<str>>(args: &[S]) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    let child = tokio::process::Command::new(binary())
        .args(&args)
        .env_remove("REFERRAL_ENGINE_SERVER")
        .env_remove("REFERRAL_ENGINE_TOKEN")
        .env_remove("REFERRAL_ENGINE_DATA_DIR")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the CLI");
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("referral-engine {} ran longer than {RUN_TIMEOUT:?}", args.join(" ")))
        .expect("run the CLI");
    Run {
        args,
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The referral ids of a list printed with --json.
fn ids(list: &Value) -> BTreeSet<String> {
    list["referrals"]
        .as_array()
        .unwrap_or_else(|| panic!("no referrals array in {list}"))
        .iter()
        .map(|r| r["referral_id"].as_str().expect("referral_id").to_string())
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// The row of a readable table that mentions `needle`.
fn row<'a>(table: &'a str, needle: &str) -> &'a str {
    table.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no row with {needle:?} in:\n{table}"))
}

/// A server with `emea` profiles for A and B, and referrals in every list:
///
/// * `new_a`, `new_b`: one RFI to A and B, unanswered (inbox);
/// * `active_a`: accepted by A (active);
/// * `won_a`: accepted, then won at 142,000 EUR (archive);
/// * `declined_a`: declined for budget (archive).
struct World {
    server: TestServer,
    operator: String,
    a_token: String,
    intake: Client,
    a: Client,
    /// The log position of the last command, for read-your-writes.
    last: u64,
    new_a: String,
    new_b: String,
    active_a: String,
    won_a: String,
    declined_a: String,
}

impl World {
    async fn start() -> World {
        let server = TestServer::start().await;
        let intake = server.client(&server.token(Role::Intake, None)).await;
        let a_token = server.token(Role::Partner, Some(A));
        let a = server.client(&a_token).await;
        let mut world = World {
            operator: server.token(Role::Operator, None),
            a_token,
            intake,
            a,
            server,
            last: 0,
            new_a: String::new(),
            new_b: String::new(),
            active_a: String::new(),
            won_a: String::new(),
            declined_a: String::new(),
        };
        for partner in [A, B] {
            let r = world
                .intake
                .clone()
                .register_partner_profile(profile_request(&rid(), partner, "emea"))
                .await
                .expect("register profile")
                .into_inner();
            world.seen(&r);
        }
        let both = world.submit("rfi-new", &[A, B]).await;
        (world.new_a, world.new_b) = (both[0].clone(), both[1].clone());
        world.active_a = world.submit("rfi-active", &[A]).await.remove(0);
        world.won_a = world.submit("rfi-won", &[A]).await.remove(0);
        world.declined_a = world.submit("rfi-declined", &[A]).await.remove(0);
        for id in [world.active_a.clone(), world.won_a.clone()] {
            let r = world.a.clone().accept_referral(accept_request(&rid(), &id)).await.expect("accept").into_inner();
            world.seen(&r);
        }
        let won = pb::MarkWonRequest {
            request_id: rid(),
            referral_id: world.won_a.clone(),
            final_value: Some(money("EUR", 142_000, 0)),
            closed_on: Some(date(2026, 11, 24)),
        };
        let r = world.a.clone().mark_won(won).await.expect("won").into_inner();
        world.seen(&r);
        let decline = pb::DeclineReferralRequest {
            request_id: rid(),
            referral_id: world.declined_a.clone(),
            reason: pb::ReasonCode::BudgetNotAdequate as i32,
            notes: String::new(),
        };
        let r = world.a.clone().decline_referral(decline).await.expect("decline").into_inner();
        world.seen(&r);
        world
    }

    fn seen(&mut self, r: &pb::CommandResult) {
        if let Some(p) = &r.position {
            self.last = self.last.max(p.commit);
        }
    }

    async fn submit(&mut self, rfi: &str, partners: &[&str]) -> Vec<String> {
        let response =
            self.intake.clone().submit_rfi(rfi_request(&rid(), rfi, partners)).await.expect("submit").into_inner();
        for r in &response.referrals {
            if let Some(result) = &r.result {
                self.seen(result);
            }
        }
        response.referrals.into_iter().map(|r| r.referral_id).collect()
    }

    /// Runs the CLI against this server with `token`.
    async fn cli(&self, token: &str, args: &[&str]) -> Run {
        let server = format!("http://{}", self.server.addr);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--server", &server, "--token", token]);
        cli(&all).await
    }

    /// Waits until every projection's active version is live and has applied
    /// the last command (read through the CLI's `projections status --json`).
    async fn wait_until_live(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.cli(&self.operator, &["projections", "status", "--json"]).await.json();
            let projections = status["projections"].as_array().expect("projections").clone();
            let live = projections.iter().all(|p| {
                let v = &p["versions"][0];
                v["active"] == true && v["state"] == "live" && v["checkpoint"]["commit"].as_u64() >= Some(self.last)
            });
            if live && projections.len() == 4 {
                return status;
            }
            assert!(Instant::now() < deadline, "the projections did not all become live:\n{status:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn versions<'a>(status: &'a Value, name: &str) -> &'a Vec<Value> {
    status["projections"]
        .as_array()
        .expect("projections")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no projection {name} in {status:#}"))["versions"]
        .as_array()
        .expect("versions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_show_each_referral_in_its_list_with_its_key_dates_and_values() {
    let w = World::start().await;
    let op = w.operator.as_str();
    let min = w.last.to_string();

    let inbox = w.cli(op, &["inbox", "--partner", A, "--min-position", &min]).await.ok();
    let first = inbox.lines().next().unwrap_or_default();
    for column in ["ID", "PARTNER", "REGION", "CUSTOMER", "RECEIVED", "RESPONSE DUE", "OVERDUE", "EXPIRES", "ALERT"] {
        assert!(first.contains(column), "inbox header lacks {column}:\n{inbox}");
    }
    let line = row(&inbox, &w.new_a);
    // Received at the test epoch; answer due 24 h later; expires after 14 days; hot alert.
    for value in [A, "emea", "Fabrikam AG", "2026-11-24 09:00Z", "2026-11-25 09:00Z", "2026-12-08 09:00Z", "hot"] {
        assert!(line.contains(value), "inbox row lacks {value:?}: {line}");
    }
    for other in [&w.new_b, &w.active_a, &w.won_a, &w.declined_a] {
        assert!(!inbox.contains(other.as_str()), "inbox for {A} shows {other}:\n{inbox}");
    }
    assert!(inbox.contains("1 referral(s)"), "{inbox}");

    let all = w.cli(op, &["inbox", "--json"]).await.json();
    assert_eq!(ids(&all), set(&[&w.new_a, &w.new_b]), "{all:#}");
    assert_eq!(all["next_page_token"], "");
    let a_row = all["referrals"].as_array().unwrap().iter().find(|r| r["referral_id"] == w.new_a.as_str()).unwrap();
    assert_eq!(a_row["status"], "new");
    assert_eq!(a_row["customer"]["company_name"], "Fabrikam AG");
    assert_eq!(a_row["response_due_at"], "2026-11-25T09:00:00Z");

    // Paging: one per page, the token printed for the next; --all-pages follows it.
    let page = w.cli(op, &["inbox", "--page-size", "1"]).await.ok();
    let token = page
        .lines()
        .find_map(|l| l.strip_prefix("next page: --page-token "))
        .unwrap_or_else(|| panic!("no next page token in:\n{page}"))
        .to_string();
    let second = w.cli(op, &["inbox", "--page-size", "1", "--page-token", &token, "--json"]).await.json();
    assert_eq!(ids(&second).len(), 1);
    assert!(!page.contains(ids(&second).first().unwrap().as_str()), "page 2 repeats page 1");
    let everything = w.cli(op, &["inbox", "--page-size", "1", "--all-pages", "--json"]).await.json();
    assert_eq!(ids(&everything), set(&[&w.new_a, &w.new_b]));
    assert_eq!(everything["next_page_token"], "");

    let active = w.cli(op, &["active", "--partner", A]).await.ok();
    let line = row(&active, &w.active_a);
    for value in ["Fabrikam ERP migration", "125000.5 EUR", "2026-12-31", "2026-11-24 09:00Z"] {
        assert!(line.contains(value), "active row lacks {value:?}: {line}");
    }
    assert!(!active.contains(w.won_a.as_str()) && !active.contains(w.new_a.as_str()), "{active}");

    let archive = w.cli(op, &["archive", "--partner", A, "--region", "emea"]).await.ok();
    let won = row(&archive, &w.won_a);
    assert!(won.contains("won") && won.contains("142000 EUR (closed on 2026-11-24)"), "{won}");
    let declined = row(&archive, &w.declined_a);
    assert!(declined.contains("declined") && declined.contains("budget_not_adequate"), "{declined}");
    assert!(archive.contains("2 referral(s)"), "{archive}");
    let only_won = w.cli(op, &["archive", "--outcome", "won", "--json"]).await.json();
    assert_eq!(ids(&only_won), set(&[&w.won_a]));
    let declined_or_expired =
        w.cli(op, &["archive", "--outcome", "declined", "--outcome", "expired", "--json"]).await.json();
    assert_eq!(ids(&declined_or_expired), set(&[&w.declined_a]));
    let oldest_first = w.cli(op, &["archive", "--order", "urgent", "--json"]).await.json();
    assert_eq!(ids(&oldest_first).len(), 2);
    let future = w.cli(op, &["archive", "--from", "2027-01-01T00:00:00Z", "--json"]).await.json();
    assert!(ids(&future).is_empty(), "{future:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referral_timeline_and_history_show_what_happened() {
    let w = World::start().await;
    let op = w.operator.as_str();
    let min = w.last.to_string();

    let detail = w.cli(op, &["referral", &w.active_a, "--min-position", &min]).await.ok();
    for value in ["active / accepted", "Fabrikam ERP migration", "125000.5 EUR", "contoso (region emea)"] {
        assert!(detail.contains(value), "referral lacks {value:?}:\n{detail}");
    }
    let detail = w.cli(op, &["referral", &w.won_a, "--json"]).await.json();
    assert_eq!(detail["substatus"], "won");
    assert_eq!(detail["outcome"]["final_value"]["units"], 142_000);

    let timeline = w.cli(op, &["timeline", &w.won_a, "--min-position", &min]).await.ok();
    let header = timeline.lines().nth(1).unwrap_or_default();
    for column in ["REV", "TIME", "EVENT", "ACTOR"] {
        assert!(header.contains(column), "timeline header lacks {column}:\n{timeline}");
    }
    let events: Vec<(&str, &str)> = timeline
        .lines()
        .skip(2)
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[0], cells[2])
        })
        .collect();
    assert_eq!(
        events,
        [("0", "ReferralReceived"), ("1", "ReferralAccepted"), ("2", "ReferralWon")],
        "timeline:\n{timeline}"
    );
    assert!(row(&timeline, "ReferralWon").contains("2026-11-24T09:00:00Z"), "{timeline}");
    let timeline = w.cli(op, &["timeline", &w.won_a, "--json"]).await.json();
    let types: Vec<&str> =
        timeline["events"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ReferralReceived", "ReferralAccepted", "ReferralWon"]);
    assert!(timeline["events"][2]["actor"].as_str().unwrap().starts_with("partner:contoso/"), "{timeline:#}");
    assert!(timeline["events"][2]["data"].is_object(), "the payload is parsed: {timeline:#}");
    assert!(timeline["events"][2]["data"].to_string().contains("142000"), "{timeline:#}");

    let history = w.cli(op, &["history", "--partner", A, "--min-position", &min]).await.ok();
    for value in [
        "history of partner contoso (all regions)",
        "received 4, accepted 2, declined 1, expired 0, won 1, lost 0",
        "acceptance rate  66.7%",
        "win rate         100.0%",
        "response time    3 answered; median 0s, p90 0s",
        "decline reasons  budget_not_adequate 1",
        "won deals        142000 EUR (1 deal)",
        "by feature",
        "recent deals",
    ] {
        assert!(history.contains(value), "history lacks {value:?}:\n{history}");
    }
    let industry = row(&history, "manufacturing");
    let cells: Vec<&str> = industry.split_whitespace().collect();
    assert_eq!(cells, ["industry", "manufacturing", "4", "2", "1", "0", "1", "0", "66.7%", "100.0%"], "{history}");
    assert!(row(&history, &w.won_a).contains("142000 EUR"), "{history}");

    let json = w.cli(op, &["history", "--partner", A, "--region", "emea", "--json"]).await.json();
    assert_eq!(json["region"], "emea");
    assert_eq!(json["counts"]["received"], 4);
    assert_eq!(json["counts"]["won"], 1);
    assert_eq!(json["deal_totals"][0]["total"]["units"], 142_000);
    assert_eq!(json["recent_deals"][0]["referral_id"], w.won_a.as_str());
    assert_eq!(json["decline_reasons"][0]["reason"], "budget_not_adequate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_token_cannot_see_another_partners_inbox() {
    let w = World::start().await;
    let min = w.last.to_string();

    let own = w.cli(&w.a_token, &["inbox", "--min-position", &min]).await.ok();
    assert!(own.contains(w.new_a.as_str()) && !own.contains(w.new_b.as_str()), "{own}");

    let refused = w.cli(&w.a_token, &["inbox", "--partner", B]).await.failed();
    assert!(refused.stderr.contains("PERMISSION_DENIED"), "{}", refused.describe());
    assert!(refused.stdout.is_empty(), "{}", refused.describe());
    let refused = w.cli(&w.a_token, &["inbox", "--partner", B, "--json"]).await.failed();
    let error: Value = serde_json::from_str(&refused.stdout).expect("JSON error");
    assert_eq!(error["error"]["code"], "PERMISSION_DENIED", "{}", refused.describe());

    let refused = w.cli(&w.a_token, &["referral", &w.new_b]).await.failed();
    assert!(refused.stderr.contains("PERMISSION_DENIED"), "{}", refused.describe());
    let refused = w.cli(&w.a_token, &["history", "--partner", B]).await.failed();
    assert!(refused.stderr.contains("PERMISSION_DENIED"), "{}", refused.describe());
    // Operating the projections needs an operator token.
    let refused = w.cli(&w.a_token, &["projections", "status"]).await.failed();
    assert!(refused.stderr.contains("PERMISSION_DENIED"), "{}", refused.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_status_rebuild_and_retry_against_the_server() {
    let w = World::start().await;
    let op = w.operator.as_str();
    let live = w.wait_until_live().await;
    // Every projection reads the same events.
    let events = versions(&live, "timeline")[0]["events_applied"].as_u64().expect("events_applied");

    let status = w.cli(op, &["projections", "status"]).await.ok();
    let header = status.lines().next().unwrap_or_default();
    for column in
        ["NAME", "VERSION", "ACTIVE", "STATE", "CHECKPOINT", "HEAD", "LAG", "LAG (S)", "EVENTS/S", "LAST ERROR"]
    {
        assert!(header.contains(column), "status header lacks {column}:\n{status}");
    }
    for name in ["referrals", "timeline", "history", "deadlines"] {
        let cells: Vec<&str> = row(&status, name).split_whitespace().collect();
        assert_eq!(&cells[..4], [name, "1", "yes", "live"], "{status}");
        assert_eq!(cells[4], w.last.to_string(), "checkpoint:\n{status}");
        assert_eq!(cells[cells.len() - 1], "-", "no error:\n{status}");
    }

    // No terminal: no progress bar, one summary line.
    let rebuilt = w.cli(op, &["projections", "rebuild", "referrals"]).await.ok();
    assert!(rebuilt.starts_with("rebuilt referrals: version 2 is active; "), "{rebuilt}");
    assert_eq!(rebuilt.lines().count(), 1, "{rebuilt}");
    let status = w.cli(op, &["projections", "status", "--json"]).await.json();
    let referrals = versions(&status, "referrals");
    assert_eq!(referrals.len(), 1, "the old version is dropped: {status:#}");
    assert_eq!(referrals[0]["version"], 2);
    assert_eq!(referrals[0]["active"], true);
    assert_eq!(referrals[0]["checkpoint"]["commit"], w.last);
    // The rebuilt view answers.
    let inbox = w.cli(op, &["inbox", "--partner", A, "--json"]).await.json();
    assert_eq!(ids(&inbox), set(&[&w.new_a]));

    let rebuilt = w.cli(op, &["projections", "rebuild", "timeline", "--json"]).await.json();
    assert_eq!(rebuilt["name"], "timeline");
    assert_eq!(rebuilt["version"], 2);
    assert_eq!(rebuilt["active"], true);
    assert_eq!(rebuilt["events"], events, "{rebuilt:#}");
    assert!(rebuilt["seconds"].as_f64().is_some() && rebuilt["events_per_second"].as_f64().is_some());

    let started = w.cli(op, &["projections", "rebuild", "history", "--no-wait"]).await.ok();
    assert!(started.contains("rebuilding history: version 2 started"), "{started}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = w.cli(op, &["projections", "status", "--json"]).await.json();
        let history = versions(&status, "history");
        if history.len() == 1 && history[0]["version"] == 2 && history[0]["active"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "history v2 never became active: {status:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Several at once: rebuilt together, one line (or JSON object) each.
    let refused = w.cli(op, &["projections", "rebuild", "deadlines", "referrals", "deadlines"]).await.failed();
    assert!(
        refused.stderr.contains("INVALID_ARGUMENT") && refused.stderr.contains("deadlines is named twice"),
        "{}",
        refused.describe()
    );
    let together = w.cli(op, &["projections", "rebuild", "deadlines", "referrals"]).await.ok();
    let lines: Vec<&str> = together.lines().collect();
    assert_eq!(lines.len(), 2, "{together}");
    assert!(
        lines[0].starts_with(&format!("rebuilt deadlines: version 2 is active; {events} events in ")),
        "{together}"
    );
    assert!(
        lines[1].starts_with(&format!("rebuilt referrals: version 3 is active; {events} events in ")),
        "{together}"
    );
    let together = w.cli(op, &["projections", "rebuild", "timeline", "deadlines", "--json"]).await.json();
    let objects = together.as_array().unwrap_or_else(|| panic!("a list: {together:#}"));
    assert_eq!(objects.len(), 2, "{together:#}");
    for (object, (name, version)) in objects.iter().zip([("timeline", 3), ("deadlines", 3)]) {
        assert_eq!((object["name"].as_str(), object["version"].as_u64()), (Some(name), Some(version)), "{together:#}");
        assert_eq!((object["active"].as_bool(), object["events"].as_u64()), (Some(true), Some(events)), "{together:#}");
    }
    let status = w.cli(op, &["projections", "status", "--json"]).await.json();
    for (name, version) in [("referrals", 3), ("timeline", 3), ("history", 2), ("deadlines", 3)] {
        let v = versions(&status, name);
        assert_eq!((v.len(), v[0]["version"].as_u64()), (1, Some(version)), "{name}: {status:#}");
    }

    let retried = w.cli(op, &["projections", "retry", "deadlines"]).await.ok();
    assert_eq!(retried.trim(), "deadlines was not failed; nothing to retry");
    let retried = w.cli(op, &["projections", "retry", "deadlines", "--json"]).await.json();
    assert_eq!(retried["was_failed"], false);
    let abandoned = w.cli(op, &["projections", "abandon", "deadlines"]).await.ok();
    assert_eq!(abandoned.trim(), "deadlines has no rebuild in progress; nothing to abandon");

    let unknown = w.cli(op, &["projections", "rebuild", "nope"]).await.failed();
    assert!(
        unknown.stderr.contains("NOT_FOUND") && unknown.stderr.contains("referrals, timeline"),
        "{}",
        unknown.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_work_offline_on_a_data_dir() {
    let w = World::start().await;
    let last = w.last;
    let live = w.wait_until_live().await;
    // Every projection reads the same events.
    let events = versions(&live, "history")[0]["events_applied"].as_u64().expect("events_applied");
    let dir: PathBuf = w.server.data_dir.path().to_path_buf();

    // While a server holds the directory, offline mode is refused and says what to do.
    let refused = cli(&["projections", "status", "--data-dir", path(&dir)]).await.failed();
    assert!(
        refused.stderr.contains("in use by another process") && refused.stderr.contains("without --data-dir"),
        "{}",
        refused.describe()
    );

    let data = w.server.stop_keeping_data().await;
    let dir = data.path();
    let missing = cli(&["projections", "status", "--data-dir", path(&dir.join("nothing-here"))]).await.failed();
    assert!(missing.stderr.contains("holds no event store"), "{}", missing.describe());
    assert!(!dir.join("nothing-here").exists(), "offline status must not create a data directory");

    let status = cli(&["projections", "status", "--data-dir", path(dir)]).await.ok();
    for name in ["referrals", "timeline", "history", "deadlines"] {
        let cells: Vec<&str> = row(&status, name).split_whitespace().collect();
        // Nothing runs offline; the checkpoints are where the server left them.
        assert_eq!(&cells[..6], [name, "1", "yes", "stopped", &last.to_string(), &last.to_string()], "{status}");
    }
    assert!(status.contains("read offline from"), "{status}");

    let rebuilt = cli(&["projections", "rebuild", "history", "--data-dir", path(dir)]).await.ok();
    assert!(rebuilt.starts_with(&format!("rebuilt history: version 2 is active; {events} events in ")), "{rebuilt}");
    let status = cli(&["projections", "status", "--data-dir", path(dir), "--json"]).await.json();
    let history = versions(&status, "history");
    assert_eq!(history.len(), 1, "{status:#}");
    assert_eq!(history[0]["version"], 2);
    assert_eq!(history[0]["active"], true);
    assert_eq!(history[0]["checkpoint"]["commit"], last);
    assert_eq!(history[0]["events_applied"], events);
    assert_eq!(versions(&status, "referrals")[0]["version"], 1, "only history is rebuilt");

    let rebuilt = cli(&["projections", "rebuild", "referrals", "--data-dir", path(dir), "--json"]).await.json();
    assert_eq!(rebuilt["version"], 2);
    assert_eq!(rebuilt["events"], events);

    let together =
        cli(&["projections", "rebuild", "timeline", "deadlines", "--data-dir", path(dir), "--json"]).await.json();
    let versions_built: Vec<(&str, u64)> = together
        .as_array()
        .unwrap_or_else(|| panic!("a list: {together:#}"))
        .iter()
        .map(|o| (o["name"].as_str().unwrap_or_default(), o["version"].as_u64().unwrap_or_default()))
        .collect();
    assert_eq!(versions_built, [("timeline", 2), ("deadlines", 2)]);

    let retried = cli(&["projections", "retry", "timeline", "--data-dir", path(dir)]).await.ok();
    assert_eq!(retried.trim(), "timeline was not failed; nothing to retry");
    let no_wait = cli(&["projections", "rebuild", "timeline", "--data-dir", path(dir), "--no-wait"]).await.failed();
    assert!(no_wait.stderr.contains("--no-wait"), "{}", no_wait.describe());

    // As if an older build, with deadlines at schema 0, had built version 2.
    let views = rusqlite::Connection::open(dir.join(referral_infra::server::VIEWS_DIR).join("deadlines.db"))
        .expect("open the deadlines view");
    views.execute("UPDATE projection_versions SET schema = 0 WHERE name = 'deadlines'", []).expect("update");
    drop(views);
    let status = cli(&["projections", "status", "--data-dir", path(dir)]).await.ok();
    assert!(row(&status, "deadlines").contains("outdated (schema 0, now 1)"), "{status}");
    let status = cli(&["projections", "status", "--data-dir", path(dir), "--json"]).await.json();
    let deadlines = versions(&status, "deadlines");
    assert_eq!((&deadlines[0]["state"], &deadlines[0]["schema"]), (&Value::from("outdated"), &Value::from(0)));
    assert_eq!(versions(&status, "timeline")[0]["state"], "stopped");
    let rebuilt = cli(&["projections", "rebuild", "deadlines", "--data-dir", path(dir), "--json"]).await.json();
    assert_eq!(rebuilt["version"], 3);
    let status = cli(&["projections", "status", "--data-dir", path(dir), "--json"]).await.json();
    let deadlines = versions(&status, "deadlines");
    assert_eq!(deadlines.len(), 1, "{status:#}");
    assert_eq!((&deadlines[0]["state"], &deadlines[0]["schema"]), (&Value::from("stopped"), &Value::from(1)));
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

/// Appends an event that no projection can decode to the store of `dir`
/// (which no server holds); returns its log position.
async fn append_undecodable(dir: &Path) -> u64 {
    use referral_domain::eventlog::{EventData, EventStore, ExpectedRevision, StreamName};
    let store = referral_infra::store::SqliteEventStore::open(&dir.join(referral_infra::server::EVENTS_DB))
        .expect("open the event store");
    let stream = StreamName::new(format!("referral-{}", uuid::Uuid::new_v4())).expect("stream name");
    let event = EventData {
        id: uuid::Uuid::new_v4(),
        event_type: "ReferralReceived".into(),
        data: b"{\"not\": \"a referral\"}".to_vec(),
        metadata: b"{}".to_vec(),
    };
    let result = store.append(&stream, ExpectedRevision::NoStream, vec![event]).await.expect("append");
    drop(store);
    result.position.commit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_projection_shows_where_it_stopped_and_retry_says_it_was_failed() {
    let w = World::start().await;
    let last = w.last;
    w.wait_until_live().await;
    let data = w.server.stop_keeping_data().await;
    let dir = data.path();
    let bad = append_undecodable(dir).await;

    // The rebuild stops on the event and says where and what to do.
    let failed = cli(&["projections", "rebuild", "history", "--data-dir", path(dir)]).await.failed();
    assert!(
        failed.stderr.contains(&format!("the rebuild of history (version 2) stopped at position {bad}: "))
            && failed.stderr.contains("projections retry history"),
        "{}",
        failed.describe()
    );

    let status = cli(&["projections", "status", "--data-dir", path(dir)]).await.ok();
    let rebuilding: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("history "))
        .nth(1)
        .expect("the failed version's row")
        .split_whitespace()
        .collect();
    assert_eq!(&rebuilding[..4], ["history", "2", "no", "failed"], "{status}");
    assert_eq!(rebuilding[9..11], ["at", "position"], "{status}");
    assert_eq!(rebuilding[11], format!("{bad}:"), "{status}");
    let status = cli(&["projections", "status", "--data-dir", path(dir), "--json"]).await.json();
    let history = versions(&status, "history");
    assert_eq!(history[1]["state"], "failed", "{status:#}");
    assert_eq!(history[1]["failure"]["position"]["commit"], bad);
    assert_eq!(history[1]["checkpoint"]["commit"], last, "the events before it are applied: {status:#}");
    assert!(history[0]["failure"].is_null(), "the active version never saw the event: {status:#}");

    let retried = cli(&["projections", "retry", "history", "--data-dir", path(dir)]).await.ok();
    assert!(retried.starts_with("history was failed; it resumes from the event it failed on"), "{retried}");
    assert!(retried.contains(&format!("cleared: version 2 at position {bad}: ")), "{retried}");
    let status = cli(&["projections", "status", "--data-dir", path(dir), "--json"]).await.json();
    assert!(versions(&status, "history")[1]["failure"].is_null(), "{status:#}");
    let again = cli(&["projections", "retry", "history", "--data-dir", path(dir), "--json"]).await.json();
    assert_eq!(again["was_failed"], false);

    // Offline, a rebuild left unfinished is taken up again; the event still
    // cannot be applied, so it stops on it again.
    let resumed = cli(&["projections", "rebuild", "history", "--data-dir", path(dir)]).await.failed();
    assert!(resumed.stderr.contains("an earlier run left version 2 of history unfinished"), "{}", resumed.describe());
    assert!(resumed.stderr.contains(&format!("stopped at position {bad}")), "{}", resumed.describe());

    // The operator gives up on it: the failed version is dropped, version 1 stays.
    let abandoned = cli(&["projections", "abandon", "history", "--data-dir", path(dir)]).await.ok();
    assert!(abandoned.starts_with("abandoned the rebuild of history: version 2 "), "{abandoned}");
    let status = cli(&["projections", "status", "--data-dir", path(dir), "--json"]).await.json();
    let history = versions(&status, "history");
    assert_eq!(history.len(), 1, "{status:#}");
    assert_eq!((history[0]["version"].as_u64(), history[0]["active"].as_bool()), (Some(1), Some(true)));
    let again = cli(&["projections", "abandon", "history", "--data-dir", path(dir), "--json"]).await.json();
    assert_eq!((again["abandoned"].as_bool(), again["version"].is_null()), (Some(false), true), "{again:#}");
}

/// `--data-dir` names where a benchmark may work: it is created when
/// missing, a second run is not disturbed by the first, and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benchmark_works_in_a_scratch_directory_it_removes() {
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("not").join("yet");
    for _ in 0..2 {
        let args = ["bench", "append", "--seconds", "0.1", "--json", "--data-dir", path(&inside)];
        let report = cli(&args).await.json();
        assert!(report["value"].as_f64().is_some_and(|v| v > 0.0), "{report:#}");
        let left: Vec<_> = std::fs::read_dir(&inside).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

/// `bench append --repeat N` measures every row N times and shows each
/// side's median run; the notes list every run. (No timing is checked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_append_repeated_shows_the_median_of_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["bench", "append", "--seconds", "0.2", "--repeat", "3", "--json", "--data-dir", path(dir.path())];
    let report = cli(&args).await.json();
    let rows = report["rows"].as_array().expect("rows");
    let notes: Vec<&str> = report["notes"].as_array().expect("notes").iter().filter_map(|n| n.as_str()).collect();
    assert_eq!(rows.len(), 3, "{report:#}");
    for row in rows {
        let writers = row["writers"].as_u64().expect("writers");
        let note = notes
            .iter()
            .find(|n| n.starts_with(&format!("{writers} writers, 3 runs each")))
            .unwrap_or_else(|| panic!("no note for {writers} writers: {notes:?}"));
        // "...(the row shows each side's median run): engine A · B · C; baseline D · E · F"
        let figures = note.rsplit("): ").next().expect("figures");
        let listed = |side: &str| -> Vec<f64> {
            let list =
                figures.split("; ").find_map(|part| part.strip_prefix(&format!("{side} "))).expect("side listed");
            list.split(" · ").map(|n| n.trim().parse::<f64>().expect("a figure")).collect()
        };
        for (side, key) in [("engine", "value"), ("baseline", "baseline")] {
            let mut runs = listed(side);
            assert_eq!(runs.len(), 3, "{note}");
            runs.sort_by(f64::total_cmp);
            let shown = row[key].as_f64().expect("figure").round();
            assert_eq!(shown, runs[1], "{side} at {writers} writers shows the middle run: {note}");
        }
    }
}

/// `bench queries` measures each row against its baseline and makes the
/// open-loop row at the rate asked for its headline; a rate of nothing is
/// refused. (A smoke test of the mechanism: no timing is checked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_queries_heads_with_eight_clients_sharing_the_rate_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["bench", "queries", "--referrals", "300", "--seconds", "0.2", "--rate", "200", "--json", "--data-dir"];
    let report = cli(&[&args[..], &[path(dir.path())]].concat()).await.json();
    assert_eq!(report["scenario"], "queries");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 7, "{report:#}");
    let headline = rows.last().unwrap();
    assert_eq!(headline["label"], "inbox, mixed, 8 clients, 200 pages/s", "{report:#}");
    assert_eq!(headline["writers"], 8);
    assert_eq!(headline["value"], report["value"]);
    assert_eq!(rows[5]["label"], "inbox, mixed, 8 clients", "the saturated row has no rate: {report:#}");
    for row in rows {
        assert!(row["p99_us"].as_u64().unwrap_or(0) > 0, "{row:#}");
        assert!(row["baseline_p99_us"].as_u64().unwrap_or(0) > 0, "{row:#}");
    }
    assert!(report["value_description"].as_str().unwrap_or("").contains("sharing 200 pages/s"), "{report:#}");

    let refused =
        cli(&["bench", "queries", "--referrals", "10", "--rate", "0", "--data-dir", path(dir.path())]).await.failed();
    assert!(refused.stderr.contains("--rate must be a positive number"), "{}", refused.stderr);
}

/// `bench rebuild` runs the baseline and every rebuild in a process of its
/// own and reports each one's events/s and peak RSS, with the JSON keys the
/// benchmarks promise. (A smoke test of the mechanism: no timing is checked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_rebuild_measures_each_phase_in_its_own_process() {
    let dir = tempfile::tempdir().unwrap();
    let report = cli(&["bench", "rebuild", "--events", "400", "--json", "--data-dir", path(dir.path())]).await.json();
    for key in ["scenario", "value", "unit", "baseline", "ratio", "peak_rss_mb"] {
        assert!(!report[key].is_null(), "{key} is missing: {report:#}");
    }
    assert_eq!(report["scenario"], "rebuild");
    let rows = report["rows"].as_array().expect("rows");
    let labels: Vec<&str> = rows.iter().map(|r| r["label"].as_str().unwrap_or("")).collect();
    assert_eq!(
        labels,
        ["all 4 at once", "referrals", "timeline", "history", "deadlines", "all 4 at once"],
        "{report:#}"
    );
    for row in rows {
        assert!(row["value"].as_f64().unwrap_or(0.0) > 0.0, "{row:#}");
        assert!(row["baseline"].as_f64().unwrap_or(0.0) > 0.0, "{row:#}");
        // A child process's own high-water mark: some memory, far from none.
        assert!(row["peak_rss_mb"].as_f64().unwrap_or(0.0) > 1.0, "{row:#}");
        assert!(row["baseline_peak_rss_mb"].as_f64().unwrap_or(0.0) > 1.0, "{row:#}");
    }
    assert_eq!(rows.last().unwrap()["value"], report["value"], "the headline is all four at once over every event");
    let notes = report["notes"].to_string();
    assert!(notes.contains("bench-rebuild-phase"), "{notes}");

    // A phase that cannot run says why.
    let failed = cli(&[
        "bench-rebuild-phase",
        "--store",
        path(&dir.path().join("missing.db")),
        "--views",
        path(&dir.path().join("views")),
        "--phase",
        "nope",
        "--head",
        "1",
        "--batch-size",
        "10",
    ])
    .await
    .failed();
    assert!(failed.stderr.contains("error:"), "{}", failed.describe());
}

/// A data directory from a build that kept every view in one `views.db`:
/// `serve` says that file is no longer read, builds the views in `views/`,
/// and leaves the old file alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_says_the_single_file_views_of_earlier_builds_are_not_read() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let data = tempfile::tempdir().unwrap();
    let old = data.path().join("views.db");
    std::fs::write(&old, b"views of an earlier build").unwrap();
    let mut child = tokio::process::Command::new(binary())
        .args(["serve", "--data-dir", path(data.path()), "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let warning = tokio::time::timeout(RUN_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("views.db") {
                return line;
            }
        }
        panic!("serve ended without mentioning views.db");
    })
    .await
    .expect("serve mentions views.db in time");
    assert!(warning.contains("is not read and can be deleted") && warning.contains("WARN"), "{warning}");
    let views = data.path().join("views");
    let mut files: Vec<String> = Vec::new();
    let deadline = Instant::now() + RUN_TIMEOUT;
    while files.len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        files = std::fs::read_dir(&views)
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        files.retain(|f| f.ends_with(".db"));
        files.sort();
    }
    assert_eq!(files, ["deadlines.db", "history.db", "referrals.db", "timeline.db"]);
    child.kill().await.unwrap();
    assert_eq!(std::fs::read(&old).unwrap(), b"views of an earlier build");
}
