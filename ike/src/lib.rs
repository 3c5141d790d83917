//! IKE
