//! `[[notify]]`: one POST per event (a roll's start, its end, its canary's verdict) to each
//! webhook that wants it, in the body its service reads (Slack, Teams, Mattermost, or the whole
//! event as JSON for a receiver of your own). A notification is news, not part of the release:
//! one that fails is a warning, never a failed roll, and its URL (whose path is the secret) is
//! never printed, not even in the error.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, Environment, NotifyEvent, NotifyFormat, WebhookUrl};
use crate::journal::RollKind;

/// What a notification says: the same fields for every format (`json` sends them all).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: NotifyEvent,
    /// `roll` or `rollback`.
    pub kind: RollKind,
    /// The site's package, and its description.
    pub site: String,
    pub description: String,
    /// The version the roll goes to.
    pub target: String,
    /// What each node ran when the roll began.
    pub from: BTreeMap<String, Option<String>>,
    /// `code-only`, `database`, `first-install`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Seconds since the roll began.
    pub duration_secs: f64,
    /// The roll had begun changing the cluster (false: refused or failed before any change).
    pub changed: bool,
    /// Why it failed (failure), or the canary's verdict in a sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Nodes upgraded (success).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upgraded: Vec<String>,
    /// Nodes that failed within `max_failed_nodes`, left out of rotation (success).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_nodes: Vec<String>,
    /// The canary's verdict, its figures as the roll's `--json` gives them (kept as JSON here,
    /// so that this module does not depend on `roll`, which depends on it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<serde_json::Value>,
    /// The CI job that ran the roll (`CI_JOB_URL`, passed by the pipeline template).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_url: Option<String>,
    /// The one-line text the chat formats show.
    pub text: String,
}

impl Event {
    /// The canary's node and whether it passed, read from its verdict.
    fn canary_passed(&self) -> Option<(&str, bool)> {
        let v = self.canary.as_ref()?;
        Some((v["node"].as_str()?, v["passed"].as_bool()?))
    }

    /// The one line a chat shows.
    fn line(&self) -> String {
        let what = format!("[{}] {} to {}", self.site, self.kind, self.target);
        let path = self
            .path
            .as_deref()
            .map(|p| format!(" ({p} path)"))
            .unwrap_or_default();
        let reason = self.reason.clone().unwrap_or_default();
        let mut line = match self.event {
            NotifyEvent::Start => format!("{what}{path} started"),
            NotifyEvent::Success => {
                let mut l = format!(
                    "{what}{path} done in {:.0}s: {} node(s) upgraded",
                    self.duration_secs,
                    self.upgraded.len()
                );
                if !self.failed_nodes.is_empty() {
                    l.push_str(&format!(
                        "; failed, left out of rotation: {}",
                        self.failed_nodes.join(", ")
                    ));
                }
                l
            }
            NotifyEvent::Failure if !self.changed => {
                format!("{what}{path} refused, nothing changed: {reason}")
            }
            NotifyEvent::Failure => format!(
                "{what}{path} FAILED after {:.0}s: {reason}",
                self.duration_secs
            ),
            NotifyEvent::Canary => match self.canary_passed() {
                Some((node, true)) => format!("{what}: canary {node} passed: {reason}"),
                Some((node, false)) => format!("{what}: canary {node} FAILED: {reason}"),
                None => format!("{what}: canary: {reason}"),
            },
        };
        if let Some(j) = &self.job_url {
            line.push_str(&format!(" (job: {j})"));
        }
        line
    }
}

/// A webhook, resolved.
#[derive(Debug)]
struct Hook {
    url: Option<WebhookUrl>,
    /// Where the URL should have come from, when it could not be had (`url_env` unset).
    missing: Option<String>,
    format: NotifyFormat,
    on: Vec<NotifyEvent>,
}

/// The config's webhooks, with their URLs read (from the config or the environment).
#[derive(Debug, Default)]
pub struct Notifier {
    hooks: Vec<Hook>,
    site: String,
    description: String,
    job_url: Option<String>,
}

impl Notifier {
    pub fn new(cfg: &Config, env: &Environment) -> Notifier {
        let hooks = cfg
            .notify
            .iter()
            .map(|n| {
                let (url, missing) = match (&n.url, &n.url_env) {
                    (Some(u), _) => (Some(u.clone()), None),
                    (None, Some(var)) => match env.vars.get(var).map(|v| v.parse::<WebhookUrl>()) {
                        Some(Ok(u)) => (Some(u), None),
                        Some(Err(e)) => (None, Some(format!("${var} {e}"))),
                        None => (None, Some(format!("${var} is not set"))),
                    },
                    (None, None) => (None, Some("no url".into())),
                };
                let format = n.format.unwrap_or_else(|| match &url {
                    Some(u) if u.host() == "hooks.slack.com" => NotifyFormat::Slack,
                    Some(u)
                        if [
                            ".webhook.office.com",
                            ".logic.azure.com",
                            ".powerautomate.com",
                            ".powerplatform.com",
                            "flow.microsoft.com",
                        ]
                        .iter()
                        .any(|h| u.host().ends_with(h)) =>
                    {
                        NotifyFormat::Teams
                    }
                    _ => NotifyFormat::Json,
                });
                Hook {
                    url,
                    missing,
                    format,
                    on: n.on.clone(),
                }
            })
            .collect();
        Notifier {
            hooks,
            site: cfg.site.package.to_string(),
            description: cfg.site.description.clone(),
            job_url: env.job_url.clone(),
        }
    }

    /// What keeps a webhook from being sent (its `url_env` unset or not a URL), said once,
    /// before the roll changes anything.
    pub fn problems(&self) -> Vec<String> {
        self.hooks
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let why = h.missing.as_ref()?;
                Some(format!(
                    "[[notify]] #{}: no notification will be sent: {why}",
                    i + 1
                ))
            })
            .collect()
    }

    /// Whether any webhook wants `event`.
    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.hooks.iter().any(|h| h.on.contains(&event))
    }

    /// An event with this notifier's site and job filled in.
    pub fn event(&self, event: NotifyEvent, kind: RollKind, target: &str) -> Event {
        Event {
            event,
            kind,
            site: self.site.clone(),
            description: self.description.clone(),
            target: target.to_string(),
            from: BTreeMap::new(),
            path: None,
            duration_secs: 0.0,
            changed: false,
            reason: None,
            upgraded: Vec::new(),
            failed_nodes: Vec::new(),
            canary: None,
            job_url: self.job_url.clone(),
            text: String::new(),
        }
    }

    /// Posts `event` to every webhook that wants it, at once (10 s at most each). Returns the
    /// warnings for those that failed, with the URL shown without its secret.
    pub fn send(&self, mut event: Event) -> Vec<String> {
        event.text = event.line();
        let event = &event;
        std::thread::scope(|s| {
            let jobs: Vec<_> = self
                .hooks
                .iter()
                .filter(|h| h.on.contains(&event.event))
                .map(|h| s.spawn(move || post(h, event)))
                .collect();
            jobs.into_iter()
                .filter_map(|j| {
                    j.join()
                        .unwrap_or_else(|_| Some("a notification thread panicked".into()))
                })
                .collect()
        })
    }
}

/// The body `format` expects.
fn body(format: NotifyFormat, e: &Event) -> serde_json::Value {
    match format {
        NotifyFormat::Json => serde_json::to_value(e).unwrap_or_default(),
        NotifyFormat::Slack | NotifyFormat::Mattermost => serde_json::json!({ "text": e.text }),
        // Teams Workflows ("Send webhook alerts to a channel"), which replaced the Office 365
        // connectors (retired on 2026-03-31), post the Adaptive Card of a message's attachment.
        NotifyFormat::Teams => serde_json::json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        {
                            "type": "TextBlock",
                            "text": format!("{} {}: {}", e.site, e.kind, e.event),
                            "weight": "Bolder",
                            "color": match (e.event, e.canary_passed().map(|c| c.1)) {
                                (NotifyEvent::Failure, _) | (NotifyEvent::Canary, Some(false)) => "Attention",
                                (NotifyEvent::Success, _) | (NotifyEvent::Canary, Some(true)) => "Good",
                                _ => "Default",
                            },
                        },
                        { "type": "TextBlock", "text": e.text, "wrap": true },
                    ],
                },
            }],
        }),
    }
}

/// One POST; `Some(warning)` when it failed. A webhook without a URL is skipped: the roll
/// said so before it began ([`Notifier::problems`]).
fn post(h: &Hook, e: &Event) -> Option<String> {
    let url = h.url.as_ref()?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let body = body(h.format, e).to_string();
    let result = agent
        .post(url.expose())
        .header("Content-Type", "application/json")
        .header(
            "User-Agent",
            concat!("moodle-release/", env!("CARGO_PKG_VERSION")),
        )
        .send(body.as_bytes());
    match result {
        Ok(_) => None,
        Err(err) => {
            // An error may quote the URL: never with its secret.
            let shown = url.to_string();
            let msg = err.to_string().replace(url.expose(), &shown);
            Some(format!("notify {shown} ({}): not sent: {msg}", e.event))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_gets_its_body_and_the_line_says_what_happened() {
        let n = Notifier {
            site: "moodle-site".into(),
            job_url: Some("https://gitlab.example.edu/site/-/jobs/42".into()),
            ..Notifier::default()
        };
        let mut e = n.event(NotifyEvent::Failure, RollKind::Roll, "4.5.3+1");
        e.path = Some("code-only".into());
        e.duration_secs = 61.6;
        e.changed = true;
        e.reason = Some("web2: apt-get failed".into());
        e.text = e.line();
        assert_eq!(
            e.text,
            "[moodle-site] roll to 4.5.3+1 (code-only path) FAILED after 62s: web2: apt-get failed (job: https://gitlab.example.edu/site/-/jobs/42)"
        );
        assert_eq!(
            body(NotifyFormat::Slack, &e),
            serde_json::json!({"text": e.text})
        );
        let teams = body(NotifyFormat::Teams, &e);
        let card = &teams["attachments"][0]["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["body"][0]["color"], "Attention");
        assert_eq!(card["body"][1]["text"], e.text.as_str());
        let json = body(NotifyFormat::Json, &e);
        assert_eq!(json["event"], "failure");
        assert_eq!(json["target"], "4.5.3+1");
        assert_eq!(json["reason"], "web2: apt-get failed");
        e.changed = false;
        e.reason = Some("refused: inside the freeze window \"exams\"".into());
        assert_eq!(
            e.line(),
            "[moodle-site] roll to 4.5.3+1 (code-only path) refused, nothing changed: refused: inside the freeze window \"exams\" (job: https://gitlab.example.edu/site/-/jobs/42)"
        );
    }

    #[test]
    fn a_failed_post_is_a_warning_without_the_secret() {
        // Nothing listens on port 9 of loopback (discard is not run here): refused at once.
        let hook = Hook {
            url: Some("http://127.0.0.1:9/hooks/SECRET-TOKEN".parse().unwrap()),
            missing: None,
            format: NotifyFormat::Json,
            on: vec![NotifyEvent::Start],
        };
        let n = Notifier {
            hooks: vec![hook],
            ..Notifier::default()
        };
        let warnings = n.send(n.event(NotifyEvent::Start, RollKind::Roll, "2"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("notify http://127.0.0.1:9/… (start): not sent"),
            "{warnings:?}"
        );
        assert!(!warnings[0].contains("SECRET"), "{warnings:?}");
        // An event nobody wants is not sent.
        assert!(n
            .send(n.event(NotifyEvent::Success, RollKind::Roll, "2"))
            .is_empty());
    }
}
