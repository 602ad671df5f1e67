//! `ferry serve`: a read-only, Hugging Face-compatible endpoint over repos that `ferry pull`
//! wrote (cache or local-dir layout). Work in progress: not implemented yet.
