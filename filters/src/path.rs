//! Path normalisation before policy matching.
