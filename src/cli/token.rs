//! `concord token create|list|revoke`: access tokens, through the admin subjects.

use clap::Subcommand;
use serde_json::{json, Value};

use super::{out, show, Global};
use concord::client::{Client, ClientError};

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a new token and print it once: the cluster keeps only its SHA-256.
    Create {
        /// What the token may do: read (get, scan), readwrite (also put, delete) or admin.
        #[arg(long, default_value = "read", value_parser = ["read", "readwrite", "admin"])]
        role: String,
        /// A label shown by `token list`.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 30d or 12h (default: no expiry).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List tokens: id, name, role, created, expires (never the tokens themselves). Every
    /// token, page after page, unless `--limit` asks for one page.
    List {
        /// Show one page of at most this many tokens (in id order) instead of all of them.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// With `--limit`: the page after this token id (the last id of the previous page).
        #[arg(long, value_name = "ID", requires = "limit")]
        after: Option<String>,
    },
    /// Revoke a token by its id (from `token list`) or by the token itself.
    Revoke {
        #[arg(value_name = "ID|TOKEN")]
        id: String,
    },
}

/// Runs one token command.
pub async fn run(client: &Client, global: &Global, cmd: TokenCmd) -> Result<i32, ClientError> {
    use concord::subjects::AdminOp;
    let (op, body) = match cmd {
        TokenCmd::List { limit, after } => return list(client, global, limit, after).await,
        TokenCmd::Create {
            role,
            name,
            expires,
        } => (
            AdminOp::TokenCreate,
            json!({"role": role, "name": name, "expires_in": expires}),
        ),
        TokenCmd::Revoke { id } => (AdminOp::TokenRevoke, json!({ "id": id })),
    };
    let v = client.admin(op, body).await?;
    let text = match op {
        AdminOp::TokenCreate => format!(
            "{}\n\nid {}, role {}, expires {}.\nStore the token now: it cannot be shown again.",
            show(&v["token"]),
            show(&v["id"]),
            show(&v["role"]),
            v["expires"].as_str().unwrap_or("never"),
        ),
        AdminOp::TokenRevoke => {
            if v["revoked"] == json!(true) {
                format!("revoked token {}", show(&v["id"]))
            } else {
                format!("token {} was already revoked", show(&v["id"]))
            }
        }
        _ => String::new(),
    };
    Ok(out(global, v, || text))
}

/// `token list`: one page with `--limit` (the reply as the server sent it, `more` included),
/// else every page, shown as one list (`--json`: one reply holding them all, `more: false`).
async fn list(
    client: &Client,
    global: &Global,
    limit: Option<usize>,
    after: Option<String>,
) -> Result<i32, ClientError> {
    let (tokens, more) = match limit {
        Some(_) => {
            let page = client.token_list_page(limit, after.as_deref()).await?;
            (page.tokens, page.more)
        }
        None => (client.token_list().await?, false),
    };
    let v = json!({"ok": true, "tokens": &tokens, "more": more});
    Ok(out(global, v, || {
        let mut text = tokens_text(&tokens);
        if more {
            let last = tokens.last().map(|t| show(&t["id"])).unwrap_or_default();
            text.push_str(&format!("\n(more: --after {last})"));
        }
        text
    }))
}

/// The table of `token list`, oldest first (pages come in id order).
fn tokens_text(tokens: &[Value]) -> String {
    if tokens.is_empty() {
        return "no tokens".into();
    }
    let mut list: Vec<&Value> = tokens.iter().collect();
    list.sort_by(|a, b| {
        let key = |t: &Value| (show(&t["created"]), show(&t["id"]));
        key(a).cmp(&key(b))
    });
    let mut s = format!(
        "{:<16}  {:<9}  {:<20}  {:<20}  {}",
        "ID", "ROLE", "CREATED", "EXPIRES", "NAME"
    );
    for t in list {
        let expires = match (t["expires"].as_str(), t["expired"] == json!(true)) {
            (None, _) => "never".to_string(),
            (Some(e), true) => format!("{e} (expired)"),
            (Some(e), false) => e.to_string(),
        };
        s.push_str(&format!(
            "\n{:<16}  {:<9}  {:<20}  {:<20}  {}",
            show(&t["id"]),
            show(&t["role"]),
            show(&t["created"]),
            expires,
            t["name"].as_str().unwrap_or("-"),
        ));
    }
    s
}
