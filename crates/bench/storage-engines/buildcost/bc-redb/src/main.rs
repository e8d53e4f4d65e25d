use redb::{ReadableDatabase, TableDefinition};
const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t");
fn main() {
    let db = redb::Database::create("/tmp/storebench/data/bc-redb.redb").unwrap();
    let tx = db.begin_write().unwrap();
    tx.open_table(T).unwrap().insert(&b"a"[..], &b"b"[..]).unwrap();
    tx.commit().unwrap();
    let r = db.begin_read().unwrap();
    println!("{:?}", r.open_table(T).unwrap().get(&b"a"[..]).unwrap().map(|g| g.value().to_vec()));
}
