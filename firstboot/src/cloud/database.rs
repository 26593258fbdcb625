//! MariaDB on the box's `mariadb` volume: sized by the plan, loaded from the
//! schemas the build migrated (images/scripts/openstack.sh), one user per
//! service with the password first boot generated.

use super::ini::Ini;
use super::service::write_dropin;
use super::{keys, service};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use crate::model::plan::ControlPlane;
use ciab_core::wait::{wait_until, Poll};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The server's socket, where root logs in by unix_socket authentication.
pub const SOCKET: &str = "/run/mysqld/mysqld.sock";


/// ciab's server settings, read after Debian's own.
pub const SERVER_CNF: &str = "etc/mysql/mariadb.conf.d/90-ciab.cnf";

pub const DATADIR: &str = "var/lib/mysql";

/// A service's database account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub user: &'static str,
    /// The secret (under the secrets directory) holding its password.
    pub secret: &'static str,
    /// Databases it owns, each with the schema dump it starts from.
    pub databases: &'static [(&'static str, &'static str)],
}

/// Every service's account; Nova's cell0 database starts from the same
/// schema as its cell1 database.
pub const ACCOUNTS: &[Account] = &[
    Account { user: "keystone", secret: "keystone-db", databases: &[("keystone", "keystone")] },
    Account { user: "glance", secret: "glance-db", databases: &[("glance", "glance")] },
    Account { user: "placement", secret: "placement-db", databases: &[("placement", "placement")] },
    Account { user: "nova", secret: "nova-db", databases: &[("nova_api", "nova_api"), ("nova", "nova"), ("nova_cell0", "nova")] },
    Account { user: "neutron", secret: "neutron-db", databases: &[("neutron", "neutron")] },
    Account { user: "cinder", secret: "cinder-db", databases: &[("cinder", "cinder")] },
    Account { user: "octavia", secret: "octavia-db", databases: &[("octavia", "octavia")] },
    Account { user: "barbican", secret: "barbican-db", databases: &[("barbican", "barbican")] },
];

/// oslo.db's URL for `account` on `database`, over the local socket.
pub fn connection_url(account: &Account, password: &str, database: &str) -> String {
    format!("mysql+pymysql://{}:{password}@localhost/{database}?unix_socket={SOCKET}&charset=utf8", account.user)
}

/// The server's settings from the plan: memory, connections, loopback only.
pub fn server_cnf(cp: &ControlPlane) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot from the sizing plan (/var/lib/ciab/plan.json).");
    ini.set("mysqld", "bind-address", "127.0.0.1")
        .set("mysqld", "skip-name-resolve", "ON")
        .set("mysqld", "datadir", "/var/lib/mysql")
        .set("mysqld", "innodb_buffer_pool_size", format!("{}M", cp.mariadb.innodb_buffer_pool_mib))
        .set("mysqld", "max_connections", cp.mariadb.max_connections)
        .set("mysqld", "character-set-server", "utf8mb4")
        .set("mysqld", "collation-server", "utf8mb4_general_ci")
        // OpenStack's many small transactions; the box has one disk and a UPS is not assumed.
        .set("mysqld", "innodb_flush_log_at_trx_commit", 1);
    ini
}

/// SQL that creates (or re-creates, idempotently) every account with its
/// current password and grants it its databases.
pub fn accounts_sql(secret: impl Fn(&str) -> Result<String>) -> Result<String> {
    let mut sql = String::new();
    for a in ACCOUNTS {
        let pw = secret(a.secret)?;
        if !pw.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("secret {} is not alphanumeric: refusing to put it in SQL", a.secret);
        }
        sql.push_str(&format!("CREATE USER IF NOT EXISTS '{u}'@'localhost' IDENTIFIED BY '{pw}';\nALTER USER '{u}'@'localhost' IDENTIFIED BY '{pw}';\n", u = a.user));
        for (db, _) in a.databases {
            sql.push_str(&format!("GRANT ALL PRIVILEGES ON `{db}`.* TO '{}'@'localhost';\n", a.user));
        }
    }
    sql.push_str("FLUSH PRIVILEGES;\n");
    Ok(sql)
}

/// Runs SQL as root over the socket; the statements go through a 0600 file
/// so passwords never show in a process list.
pub fn run_sql(state_dir: &Path, database: Option<&str>, sql: &str) -> Result<()> {
    let file = state_dir.join("run/ciab-sql.sql");
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    ciab_core::atomic::write_atomic_mode(&file, sql.as_bytes(), 0o600)?;
    let result = source(database, &file);
    let _ = std::fs::remove_file(&file);
    result
}

/// Waits until the server's socket accepts connections: "active" is not
/// enough (a server started through socket activation listens elsewhere).
pub fn wait_socket(timeout: std::time::Duration) -> Result<()> {
    let waited = wait_until(timeout, Duration::from_millis(250), || {
        Ok(if std::os::unix::net::UnixStream::connect(SOCKET).is_ok() { Poll::Ready(()) } else { Poll::Pending(()) })
    })?;
    if waited.is_err() {
        bail!("MariaDB does not accept connections on {SOCKET} after {} s\n{}", timeout.as_secs(), super::service::journal_tail("mariadb"));
    }
    Ok(())
}

/// `mariadb [database] -e "source FILE"` as root over the socket.
pub fn source(database: Option<&str>, file: &Path) -> Result<()> {
    let mut cmd = ciab_core::exec::Cmd::new("mariadb").package("mariadb-client").args(["--protocol=socket", &format!("--socket={SOCKET}"), "-uroot"]);
    if let Some(db) = database {
        cmd = cmd.arg(format!("--database={db}"));
    }
    cmd.arg("-e").arg(format!("source {}", file.display())).run().map(|_| ())
}

/// One schema dump to load into its (existing, empty) database, and the
/// stamp that says it is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    pub database: &'static str,
    pub schema: PathBuf,
    pub stamp: PathBuf,
}

/// Loads `loads`, `parallel` at a time, largest dump first (the longest
/// load starts first, so the last one to finish is a small one); each
/// load's stamp is written as soon as it is in, so a power cut repeats only
/// the loads that were under way.
pub fn load_schemas(mut loads: Vec<Load>, parallel: usize) -> Result<()> {
    let size = |l: &Load| std::fs::metadata(&l.schema).map(|m| m.len()).unwrap_or(0);
    loads.sort_by_key(|l| std::cmp::Reverse(size(l)));
    let queue = std::sync::Mutex::new(loads.into_iter());
    let next = || queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..parallel.max(1))
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    while let Some(load) = next() {
                        let t0 = std::time::Instant::now();
                        source(Some(load.database), &load.schema).with_context(|| format!("loading {} into database {}", load.schema.display(), load.database))?;
                        if let Some(dir) = load.stamp.parent() {
                            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                        }
                        ciab_core::atomic::write_atomic(&load.stamp, b"")?;
                        tracing::info!("database: {} loaded in {:.1} s", load.database, t0.elapsed().as_secs_f64());
                    }
                    Ok(())
                })
            })
            .collect();
        // Every worker is joined (a failed one stops taking work, the others
        // finish theirs); the first error is the step's.
        let results: Vec<Result<()>> = workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a schema load panicked")))).collect();
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    })
}

/// The rows of a query without secrets in it (it goes on the command line),
/// tab-separated, as root over the socket.
pub fn query(sql: &str) -> Result<String> {
    ciab_core::exec::Cmd::new("mariadb")
        .package("mariadb-client")
        .args(["--protocol=socket", &format!("--socket={SOCKET}"), "-uroot", "--batch", "--skip-column-names", "-e", sql])
        .run()
}

/// oslo.db's URL for `user`'s account on `database`, with its password.
pub fn db_url(ctx: &Ctx, user: &str, database: &str) -> Result<String> {
    let account = ACCOUNTS.iter().find(|a| a.user == user).with_context(|| format!("no database account {user}"))?;
    Ok(connection_url(account, &ctx.secret(account.secret)?, database))
}

pub fn pool(ctx: &Ctx) -> Result<(u32, u32)> {
    let cp = ctx.control_plane()?;
    Ok((cp.db_max_pool_size, cp.db_max_overflow))
}

pub struct DatabaseStep;

impl DatabaseStep {
    fn prepare_datadir(root: &Path) -> Result<()> {
        let datadir = root.join(DATADIR);
        // The volume's lost+found would show up as a database.
        let lost = datadir.join("lost+found");
        if lost.is_dir() && std::fs::read_dir(&lost)?.next().is_none() {
            std::fs::remove_dir(&lost).with_context(|| format!("removing {}", lost.display()))?;
        }
        let mysql = keys::system_user(root, "mysql")?;
        keys::chown(&datadir, mysql)?;
        if !datadir.join("mysql").is_dir() {
            ciab_core::exec::Cmd::new("mariadb-install-db")
                .package("mariadb-server")
                .args(["--user=mysql", "--datadir=/var/lib/mysql", "--auth-root-authentication-method=socket", "--skip-test-db"])
                .run()?;
        }
        Ok(())
    }
}

impl Step<Ctx> for DatabaseStep {
    fn about(&self) -> About {
        About { name: "database", title: "start MariaDB and load the schemas", after: &["secrets", "storage"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(ctx.stamp("database").exists() && service::is_active("mariadb"))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let cp = ctx.control_plane()?;
        ciab_core::atomic::write_atomic(&ctx.root.join(SERVER_CNF), server_cnf(&cp).render().as_bytes())?;
        // The volume is a `nofail` mount that boot does not wait for: without
        // this a later boot starts MariaDB on the empty mount point.
        write_dropin(&ctx.root, "mariadb.service", &service::requires_mounts_dropin(&["/var/lib/mysql"]))?;
        Self::prepare_datadir(&ctx.root)?;
        service::start(&["mariadb"], false)?;
        wait_socket(Duration::from_secs(120))?;
        let pending: Vec<Load> = ACCOUNTS
            .iter()
            .flat_map(|a| a.databases.iter())
            .map(|&(db, schema)| Load {
                database: db,
                schema: ctx.root.join(ciab_core::contract::OPENSTACK_SCHEMAS_DIR).join(format!("{schema}.sql")),
                stamp: ctx.stamp(&format!("schema-{db}")),
            })
            .filter(|load| !load.stamp.exists())
            .collect();
        let loaded = pending.len();
        if !pending.is_empty() {
            let create: String = pending.iter().map(|l| format!("CREATE DATABASE IF NOT EXISTS `{}` CHARACTER SET utf8mb4;\n", l.database)).collect();
            run_sql(&ctx.state_dir, None, &create)?;
            load_schemas(pending, SCHEMA_LOADS)?;
        }
        run_sql(&ctx.state_dir, None, &accounts_sql(|n| ctx.secret(n))?)?;
        ctx.set_stamp("database")?;
        tracing::info!("database: {loaded} database(s) loaded, {} service accounts", ACCOUNTS.len());
        Ok(())
    }
}

/// Schemas loaded at once, each by its own client and server thread: one
/// after another the ten took 80 s of boot 1 under TCG, one CPU's work on a
/// box that has at least four and nothing else to do yet.
const SCHEMA_LOADS: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_database_has_an_account_and_a_schema() {
        let dbs: Vec<&str> = ACCOUNTS.iter().flat_map(|a| a.databases.iter().map(|(d, _)| *d)).collect();
        assert_eq!(dbs, ["keystone", "glance", "placement", "nova_api", "nova", "nova_cell0", "neutron", "cinder", "octavia", "barbican"]);
        // Every secret named here is one the secrets step makes for a cloud profile.
        let names = crate::host::secrets::secret_names(crate::model::plan::Profile::Eval);
        for a in ACCOUNTS {
            assert!(names.contains(&a.secret), "{} is not generated", a.secret);
        }
    }

    #[test]
    fn accounts_sql_sets_every_password_and_grant() {
        let sql = accounts_sql(|name| Ok(format!("{:0>64}", name.len()))).unwrap();
        assert!(sql.contains("CREATE USER IF NOT EXISTS 'nova'@'localhost' IDENTIFIED BY '0000000000000000000000000000000000000000000000000000000000000007';"), "{sql}");
        assert!(sql.contains("ALTER USER 'keystone'@'localhost' IDENTIFIED BY "));
        assert!(sql.contains("GRANT ALL PRIVILEGES ON `nova_cell0`.* TO 'nova'@'localhost';"));
        assert_eq!(sql.matches("GRANT ").count(), 10);
        assert!(sql.ends_with("FLUSH PRIVILEGES;\n"));
        let err = accounts_sql(|_| Ok("x'; DROP DATABASE nova; --".into())).unwrap_err();
        assert!(format!("{err:#}").contains("not alphanumeric"));
    }

    #[test]
    fn server_settings_come_from_the_plan() {
        let cp = super::super::test_plan().control_plane.unwrap();
        let text = server_cnf(&cp).render();
        assert!(text.contains(&format!("innodb_buffer_pool_size = {}M\n", cp.mariadb.innodb_buffer_pool_mib)), "{text}");
        assert!(text.contains(&format!("max_connections = {}\n", cp.mariadb.max_connections)));
        assert!(text.contains("bind-address = 127.0.0.1\n"));
        assert_eq!(
            connection_url(&ACCOUNTS[0], "pw", "keystone"),
            "mysql+pymysql://keystone:pw@localhost/keystone?unix_socket=/run/mysqld/mysqld.sock&charset=utf8"
        );
    }
}
