fn main() {
    let db = fjall::Database::builder("/tmp/storebench/data/bc-fjall").temporary(true).open().unwrap();
    let ks = db.keyspace("k", fjall::KeyspaceCreateOptions::default).unwrap();
    ks.insert("a", "b").unwrap();
    db.persist(fjall::PersistMode::SyncAll).unwrap();
    println!("{:?}", ks.get("a").unwrap());
}
