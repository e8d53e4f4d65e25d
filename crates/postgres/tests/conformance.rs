//! The Store conformance suite against PostgreSQL: every case on a fresh
//! schema (dropped afterwards), reopened through a new store for the
//! persistence cases. Skipped, saying so, when the database is unreachable
//! (a failure with `CONVERGE_LEDGER_REQUIRE_SERVICES=1`).

use converge_ledger_postgres::PostgresStore;
use converge_ledger_postgres::testkit::TestSchema;
use converge_ledger_store::Store;
use converge_ledger_store::testkit::Harness;

struct Pg {
    // Dropped after the store (fields drop in order): the schema goes last.
    store: Option<PostgresStore>,
    schema: TestSchema,
}

impl Pg {
    fn new() -> Option<Pg> {
        let name = std::thread::current()
            .name()
            .unwrap_or("postgres conformance")
            .to_owned();
        let schema = TestSchema::create(&name)?;
        let store = PostgresStore::open(schema.options()).expect("open the store");
        Some(Pg {
            store: Some(store),
            schema,
        })
    }
}

impl Harness for Pg {
    fn store(&self) -> &dyn Store {
        self.store.as_ref().expect("open")
    }

    fn reopen(&mut self) -> bool {
        drop(self.store.take());
        self.store = Some(PostgresStore::open(self.schema.options()).expect("reopen the store"));
        true
    }
}

converge_ledger_store::conformance_tests!(match Pg::new() {
    Some(h) => h,
    None => return,
});
