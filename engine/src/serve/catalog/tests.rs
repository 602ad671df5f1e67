//! Tests of `catalog`.

use super::*;

#[test]
fn git_blob_ids_match_git() {
    // `printf 'hello\n' | git hash-object --stdin`
    assert_eq!(
        git_blob_sha1(b"hello\n"),
        "ce013625030ba8dba906f756967f9e9ca394464a"
    );
    assert_eq!(
        git_blob_sha1(b""),
        "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    );
}

#[test]
fn snapshot_lists_dirs_once_and_sums_sizes() {
    let f = |size| FileEntry {
        disk: Some(PathBuf::new()),
        size,
        oid: "0".repeat(40),
        lfs: None,
    };
    let files = BTreeMap::from([
        ("a/b/c.txt".to_owned(), f(1)),
        ("a/b/d.txt".to_owned(), f(2)),
        ("a/e.txt".to_owned(), f(4)),
        ("a-b".to_owned(), f(8)),
        ("z".to_owned(), f(16)),
    ]);
    let s = Snapshot::new("1".repeat(40), files, 0);
    let paths: Vec<_> = s
        .items
        .iter()
        .map(|i| (i.path.as_str(), i.is_dir))
        .collect();
    assert_eq!(
        paths,
        [
            ("a", true),
            ("a-b", false),
            ("a/b", true),
            ("a/b/c.txt", false),
            ("a/b/d.txt", false),
            ("a/e.txt", false),
            ("z", false)
        ]
    );
    assert_eq!(s.size_under(""), Some(31));
    assert_eq!(s.size_under("a"), Some(7));
    assert_eq!(s.size_under("a/b"), Some(3));
    assert_eq!(s.size_under("a-b"), Some(8));
    assert_eq!(s.size_under("nope"), None);
}

#[test]
fn lfs_entries_carry_the_pointer_oid() {
    let sha = "a".repeat(64);
    let e = FileEntry::new(PathBuf::new(), 5, &sha).expect("entry");
    let pointer = lfs_pointer(&sha, 5);
    assert_eq!(e.etag(), sha);
    assert_eq!(e.oid, git_blob_sha1(pointer.as_bytes()));
    assert_eq!(
        e.lfs.as_ref().map(|l| l.pointer_size),
        Some(pointer.len() as u64)
    );
    assert!(FileEntry::new(PathBuf::new(), 5, "xyz").is_none());
}
