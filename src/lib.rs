//! kimi-proxy: a transparent, fast proxy for OpenAI-compatible LLM providers that counts every token.
//!
//! Modules follow the data flow: `config` → `proxy` (route, forward) → `accounting` (records) → `store` (SQLite,
//! sessions) → `server` (sockets, shutdown); `dashboard` is the embedded web page; `cli` describes the command line.

pub mod accounting;
pub mod alerts;
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod context;
pub mod dashboard;
pub mod ledgers;
pub mod live;
pub mod monitor;
pub mod proxy;
pub mod server;
pub mod store;
pub mod tokens;
