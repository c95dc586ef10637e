//! kimi-proxy: a transparent, fast proxy for OpenAI-compatible LLM providers that counts every token.
//!
//! Modules follow the data flow: `routes` (every route) → `proxy` (the request pipeline: route, shape, send,
//! respond) → `accounting` (records) → `store` (SQLite, sessions) → `live` (dashboards); `admin` holds the admin
//! surface's handlers, `server` the sockets and shutdown, `config` the configuration, `tokens` the tokenizers,
//! `dashboard` the embedded web page, `cli` the command line.

pub mod accounting;
pub mod admin;
pub mod alerts;
pub mod auth;
pub mod cli;
pub mod config;
pub mod context;
pub mod dashboard;
pub mod http_error;
pub mod ledgers;
pub mod limits;
pub mod live;
pub mod monitor;
pub mod net;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod util;
