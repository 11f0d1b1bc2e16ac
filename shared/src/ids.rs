//! Typed ids: a prefix that says what the id names (`rpc_…`, `ep_…`, `dlv_…`) and a random
//! base62 tail, parsed once at the edge so the rest of the code trusts the type.

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random id: the prefix and 22 base62 characters (~131 bits).
            pub fn generate() -> Self {
                use rand::Rng;
                const ALPHABET: &[u8] =
                    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
                let mut rng = rand::thread_rng();
                let tail: String =
                    (0..22).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect();
                Self(format!("{}{}", $prefix, tail))
            }

            /// An id read back from storage or a URL; `None` if it lacks the prefix.
            pub fn parse(raw: &str) -> Option<Self> {
                (raw.starts_with($prefix) && raw.len() > $prefix.len()
                    && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                    .then(|| Self(raw.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $crate::ids::id_schema($prefix)
            }
        }

        impl utoipa::ToSchema for $name {}

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

pub(crate) use typed_id;

/// The schema of an id with `prefix`: what [`typed_id!`]'s `parse` accepts.
pub(crate) fn id_schema(prefix: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(format!("^{prefix}[A-Za-z0-9_]+$")))
        .examples([serde_json::Value::String(format!(
            "{prefix}4mZ3kQ9xR2bT7yW1pL8nV0"
        ))])
        .into()
}
