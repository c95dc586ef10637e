//! A fresh PostgreSQL database per test on the machine's server (`KIMI_TEST_PG`, default
//! `postgres://postgres@127.0.0.1:5432`), dropped afterwards. The sync client runs on its own thread: it must
//! not block inside the test's runtime.

use std::time::{SystemTime, UNIX_EPOCH};

/// The server tests use.
pub fn server() -> String {
    std::env::var("KIMI_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database created for one test, dropped on drop.
pub struct TestDb {
    pub name: String,
}

fn admin(sql: String) -> Result<(), String> {
    std::thread::spawn(move || {
        let mut client =
            postgres::Client::connect(&format!("{}/postgres", server()), postgres::NoTls)
                .map_err(|e| e.to_string())?;
        client.batch_execute(&sql).map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "admin thread panicked".to_string())?
}

impl TestDb {
    /// A new empty database, or `None` (with the reason printed) when the server cannot be reached.
    pub fn create(test: &str) -> Option<TestDb> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("kp_{test}_{}_{nanos}", std::process::id());
        match admin(format!("CREATE DATABASE {name}")) {
            Ok(()) => Some(TestDb { name }),
            Err(error) => {
                eprintln!(
                    "SKIPPED: PostgreSQL at {} cannot be reached: {error}",
                    server()
                );
                None
            }
        }
    }

    /// The URL a proxy is given.
    pub fn url(&self) -> String {
        format!("{}/{}", server(), self.name)
    }

    /// Runs a query on the database from a thread of its own; each row's columns as text.
    pub fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let url = self.url();
        let sql = sql.to_string();
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            client
                .simple_query(&sql)
                .unwrap()
                .into_iter()
                .filter_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_string))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()
        })
        .join()
        .unwrap()
    }

    /// The first column of the first row, as an integer.
    pub fn int(&self, sql: &str) -> i64 {
        self.rows(sql)[0][0].as_deref().unwrap().parse().unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = admin(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// A TCP relay in front of the PostgreSQL server (or another, [`PgRelay::start_to`]) that the test can cut and
/// restore: "the database is down" without stopping the machine's shared server.
pub struct PgRelay {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl PgRelay {
    pub async fn start() -> PgRelay {
        let target = server()
            .rsplit('@')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .to_string();
        Self::start_to(target).await
    }

    /// A relay to any TCP server (`HOST:PORT`): Redis too.
    pub async fn start_to(target: String) -> PgRelay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, connections2) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(socket);
                    continue;
                }
                let target = target.clone();
                let handle = tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
                    }
                });
                connections2.lock().unwrap().push(handle);
            }
        });
        PgRelay {
            port,
            up,
            connections,
        }
    }

    /// The URL of `db` through the relay.
    pub fn url(&self, db: &TestDb) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db.name)
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for handle in self.connections.lock().unwrap().drain(..) {
            handle.abort();
        }
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
