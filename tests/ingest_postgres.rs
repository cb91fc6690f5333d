//! `tessera ingest --state postgresql://...` against a real PostgreSQL server started by the
//! test (`common::postgres`; skipped with a message where PostgreSQL is not installed).

mod common;

use common::postgres::PgServer;

#[test]
fn the_throwaway_server_answers_and_is_stopped_on_drop() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    assert_eq!(pg.psql("SELECT 1 + 1"), "2");
    assert_eq!(pg.psql("SELECT current_database()"), "tessera");
    let port = pg.port();
    let socket = pg.socket_dir().to_path_buf();
    assert!(socket.join(format!(".s.PGSQL.{port}")).exists());
    pg.restart();
    assert_eq!(pg.psql("SELECT 2 + 2"), "4");
    drop(pg);
    assert!(!socket.exists(), "the server's folder is removed");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens on the port any more"
    );
}
