//! Placeholder: written in a follow-up commit.
