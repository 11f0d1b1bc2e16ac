//! A delivery's body as the worker reads it. Most handlers need a handful of fields of a
//! JSON body (the activity record's six, the repository that finds a connection), so the
//! worker reads the body once, keeping just the fields its handler declared
//! ([`Handler::fields`](super::Handler::fields)) and skipping the rest without building it.
//! The whole document is built only when a handler asks for it ([`JsonBody::document`]): a
//! connected repository's runs and relayed events. Building a `serde_json::Value` of a 17 KB
//! body and dropping it was a fifth of the local server's CPU under load.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;
use std::sync::OnceLock;

use super::WorkerError;

/// A path into a JSON body: object keys, or array indexes as decimal text (`["commits", "0",
/// "timestamp"]`).
pub type FieldPath = Vec<&'static str>;

/// Paths written as slices, as field paths.
pub fn paths(list: &[&[&'static str]]) -> Vec<FieldPath> {
    list.iter().map(|p| p.to_vec()).collect()
}

/// A provider body: JSON for most, form fields for Twilio.
#[derive(Debug, Clone)]
pub enum Payload {
    Json(JsonBody),
    Form(Vec<(String, String)>),
}

/// A JSON body: the fields picked when it was read, and the whole document on demand.
#[derive(Debug, Clone)]
pub struct JsonBody {
    raw: Vec<u8>,
    picked: Vec<(FieldPath, Picked)>,
    document: OnceLock<Value>,
}

/// What a picked path held.
#[derive(Debug, Clone, PartialEq)]
enum Picked {
    Absent,
    Str(String),
    /// A number as `serde_json` writes it.
    Num(String),
    Bool(bool),
    /// An array, by its length.
    Array(usize),
    Null,
    /// An object.
    Other,
}

impl Payload {
    /// Reads `raw` once: as JSON, keeping the values at `fields`, or else as a form.
    pub fn parse(raw: Vec<u8>, fields: Vec<FieldPath>) -> Result<Self, WorkerError> {
        if let Some(picked) = pick(&raw, fields) {
            return Ok(Payload::Json(JsonBody {
                raw,
                picked,
                document: OnceLock::new(),
            }));
        }
        let text = std::str::from_utf8(&raw)
            .map_err(|_| WorkerError::Malformed("payload is neither JSON nor a form".into()))?;
        if text.contains('=') {
            Ok(Payload::Form(
                url::form_urlencoded::parse(text.as_bytes())
                    .into_owned()
                    .collect(),
            ))
        } else {
            Err(WorkerError::Malformed(
                "payload is neither JSON nor a form".into(),
            ))
        }
    }

    /// A JSON field by path (`["repository", "full_name"]`) if it is a string, number or
    /// boolean, as text; or a form field by name.
    pub fn str_at(&self, path: &[&str]) -> Option<String> {
        match self {
            Payload::Json(body) => body.str_at(path),
            Payload::Form(fields) => {
                let [name] = path else { return None };
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            }
        }
    }
}

impl From<Value> for JsonBody {
    /// A body that is already a document (tests, and callers that built one).
    fn from(document: Value) -> Self {
        Self {
            raw: Vec::new(),
            picked: Vec::new(),
            document: OnceLock::from(document),
        }
    }
}

impl JsonBody {
    /// The whole document, built on the first call.
    pub fn document(&self) -> &Value {
        // `Payload::parse` read these bytes with the checks building a `Value` makes (see
        // `Skip`), so this does not fail; `null` would only hide a bug here.
        self.document.get_or_init(|| {
            serde_json::from_slice(&self.raw).unwrap_or_else(|e| {
                tracing::error!(error = %e, "a body read as JSON once does not build");
                Value::Null
            })
        })
    }

    /// The body as an outbound event's data: its own bytes, or the document written out when
    /// it was given as one.
    pub fn event_data(&self) -> crate::outbound::model::EventData {
        if !self.raw.is_empty() {
            if let Ok(text) = String::from_utf8(self.raw.clone()) {
                if let Ok(data) = crate::outbound::model::EventData::from_json(text) {
                    return data;
                }
            }
        }
        self.document().clone().into()
    }

    /// Whether the whole document has been built (by [`document`](Self::document), or by a
    /// read of a field nobody declared).
    pub fn is_built(&self) -> bool {
        self.document.get().is_some()
    }

    fn picked(&self, path: &[&str]) -> Picked {
        if self.document.get().is_none() {
            if let Some((_, p)) = self.picked.iter().find(|(f, _)| f.as_slice() == path) {
                return p.clone();
            }
        }
        let mut cur = self.document();
        for p in path {
            cur = match cur {
                Value::Array(items) => match index(p).and_then(|i| items.get(i)) {
                    Some(v) => v,
                    None => return Picked::Absent,
                },
                other => match other.get(p) {
                    Some(v) => v,
                    None => return Picked::Absent,
                },
            };
        }
        match cur {
            Value::String(s) => Picked::Str(s.clone()),
            Value::Number(n) => Picked::Num(n.to_string()),
            Value::Bool(b) => Picked::Bool(*b),
            Value::Array(items) => Picked::Array(items.len()),
            Value::Null => Picked::Null,
            Value::Object(_) => Picked::Other,
        }
    }

    /// A string, number or boolean at `path`, as text.
    pub fn str_at(&self, path: &[&str]) -> Option<String> {
        match self.picked(path) {
            Picked::Str(s) | Picked::Num(s) => Some(s),
            Picked::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A non-empty string or a number at `path`, as text.
    pub fn text(&self, path: &[&str]) -> Option<String> {
        match self.picked(path) {
            Picked::Str(s) if !s.is_empty() => Some(s),
            Picked::Num(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean at `path`.
    pub fn bool_at(&self, path: &[&str]) -> Option<bool> {
        match self.picked(path) {
            Picked::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// Whether `path` holds anything, `null` included.
    pub fn present(&self, path: &[&str]) -> bool {
        !matches!(self.picked(path), Picked::Absent)
    }

    /// Whether `path` holds a value other than `null`.
    pub fn non_null(&self, path: &[&str]) -> bool {
        !matches!(self.picked(path), Picked::Absent | Picked::Null)
    }

    /// The length of the array at `path`.
    pub fn len_at(&self, path: &[&str]) -> Option<usize> {
        match self.picked(path) {
            Picked::Array(n) => Some(n),
            _ => None,
        }
    }
}

// ---- the one pass ------------------------------------------------------------------------------

/// The paths to pick, as a tree of keys. Slots are numbered depth first, so a node's subtree
/// owns the slots `lo..hi`.
struct Trie {
    nodes: Vec<Node>,
    /// Each field's slot.
    slots: Vec<usize>,
}

struct Node {
    key: &'static str,
    /// The key as an array index, when it is one.
    index: Option<usize>,
    children: Vec<usize>,
    /// The slot of the path ending here.
    slot: Option<usize>,
    lo: usize,
    hi: usize,
}

impl Node {
    fn new(key: &'static str) -> Self {
        Self {
            key,
            index: index(key),
            children: Vec::new(),
            slot: None,
            lo: 0,
            hi: 0,
        }
    }
}

impl Trie {
    fn new(fields: &[FieldPath]) -> Self {
        let mut trie = Self {
            nodes: vec![Node::new("")],
            slots: Vec::new(),
        };
        let mut ends = Vec::with_capacity(fields.len());
        for path in fields {
            let mut at = 0;
            for key in path {
                at = match trie.child(at, |n| n.key == *key) {
                    Some(c) => c,
                    None => {
                        trie.nodes.push(Node::new(key));
                        let c = trie.nodes.len() - 1;
                        trie.nodes[at].children.push(c);
                        c
                    }
                };
            }
            ends.push(at);
        }
        for &end in &ends {
            trie.nodes[end].slot = Some(0);
        }
        trie.number(0, &mut 0);
        trie.slots = ends
            .iter()
            .map(|&n| trie.nodes[n].slot.unwrap_or(0))
            .collect();
        trie
    }

    /// The first child of `node` that `matches`.
    fn child(&self, node: usize, matches: impl Fn(&Node) -> bool) -> Option<usize> {
        self.nodes[node]
            .children
            .iter()
            .copied()
            .find(|&c| matches(&self.nodes[c]))
    }

    /// Numbers the slots of `n`'s subtree from `next`, depth first.
    fn number(&mut self, n: usize, next: &mut usize) {
        self.nodes[n].lo = *next;
        if self.nodes[n].slot.is_some() {
            self.nodes[n].slot = Some(*next);
            *next += 1;
        }
        for c in self.nodes[n].children.clone() {
            self.number(c, next);
        }
        self.nodes[n].hi = *next;
    }
}

/// Reads `raw` as one JSON document, keeping the values at `fields`; `None` if it is not JSON.
fn pick(raw: &[u8], fields: Vec<FieldPath>) -> Option<Vec<(FieldPath, Picked)>> {
    let trie = Trie::new(&fields);
    // The root's subtree holds every slot.
    let mut out = vec![Picked::Absent; trie.nodes[0].hi];
    let mut de = serde_json::Deserializer::from_slice(raw);
    At {
        trie: &trie,
        node: 0,
        out: &mut out,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(
        fields
            .into_iter()
            .zip(&trie.slots)
            .map(|(f, &slot)| (f, out[slot].clone()))
            .collect(),
    )
}

/// The value at one node of the trie.
struct At<'a> {
    trie: &'a Trie,
    node: usize,
    out: &'a mut [Picked],
}

impl<'de> DeserializeSeed<'de> for At<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let node = &self.trie.nodes[self.node];
        // A key seen twice: the last one wins, as in a `Value`, so forget the first's picks.
        self.out[node.lo..node.hi].fill(Picked::Absent);
        d.deserialize_any(self)
    }
}

impl At<'_> {
    fn set(&mut self, value: Picked) {
        if let Some(slot) = self.trie.nodes[self.node].slot {
            self.out[slot] = value;
        }
    }

    fn child(&self, matches: impl Fn(&Node) -> bool) -> Option<usize> {
        self.trie.child(self.node, matches)
    }
}

impl<'de> Visitor<'de> for At<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(mut self, v: bool) -> Result<(), E> {
        self.set(Picked::Bool(v));
        Ok(())
    }

    fn visit_u64<E>(mut self, v: u64) -> Result<(), E> {
        self.set(Picked::Num(serde_json::Number::from(v).to_string()));
        Ok(())
    }

    fn visit_i64<E>(mut self, v: i64) -> Result<(), E> {
        self.set(Picked::Num(serde_json::Number::from(v).to_string()));
        Ok(())
    }

    fn visit_f64<E>(mut self, v: f64) -> Result<(), E> {
        // JSON holds no NaN or infinity, so every parsed float is a `Number`.
        let n = serde_json::Number::from_f64(v).map(|n| n.to_string());
        self.set(n.map_or(Picked::Other, Picked::Num));
        Ok(())
    }

    fn visit_str<E>(mut self, v: &str) -> Result<(), E> {
        self.set(Picked::Str(v.to_owned()));
        Ok(())
    }

    fn visit_string<E>(mut self, v: String) -> Result<(), E> {
        self.set(Picked::Str(v));
        Ok(())
    }

    fn visit_unit<E>(mut self) -> Result<(), E> {
        self.set(Picked::Null);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let mut len = 0;
        loop {
            let more = match self.child(|n| n.index == Some(len)) {
                Some(node) => seq
                    .next_element_seed(At {
                        trie: self.trie,
                        node,
                        out: &mut *self.out,
                    })?
                    .is_some(),
                None => seq.next_element_seed(Skip)?.is_some(),
            };
            if !more {
                break;
            }
            len += 1;
        }
        self.set(Picked::Array(len));
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(child) = map.next_key_seed(Key(self.trie, self.node))? {
            match child {
                Some(node) => map.next_value_seed(At {
                    trie: self.trie,
                    node,
                    out: &mut *self.out,
                })?,
                None => {
                    map.next_value_seed(Skip)?;
                }
            }
        }
        self.set(Picked::Other);
        Ok(())
    }
}

/// An array index as a path segment: decimal digits as `usize` writes them, so that one
/// element has one segment (`"01"` or `"+1"` index nothing).
fn index(segment: &str) -> Option<usize> {
    segment
        .parse()
        .ok()
        .filter(|i: &usize| i.to_string() == segment)
}

/// A value no path goes through, read with every check building a `Value` would make:
/// strings valid UTF-8 with paired surrogates, numbers in range, nesting within serde_json's
/// limit. (`IgnoredAny` skips without them, so a body it accepted could fail to build.)
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Skip)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

/// An object's key, as the child of a node it names (`None`: a key no path goes through).
struct Key<'a>(&'a Trie, usize);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<Option<usize>, E> {
        let Key(trie, node) = self;
        Ok(trie.child(node, |n| n.key == v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What each path reads in the picked body and in the built document must be the same.
    fn same_as_document(raw: &str, fields: &[FieldPath]) {
        let Payload::Json(picked) =
            Payload::parse(raw.as_bytes().to_vec(), fields.to_vec()).unwrap()
        else {
            panic!("not read as JSON: {raw}")
        };
        let built = JsonBody::from(serde_json::from_str::<Value>(raw).unwrap());
        for f in fields {
            assert_eq!(picked.str_at(f), built.str_at(f), "str_at {f:?} in {raw}");
            assert_eq!(picked.text(f), built.text(f), "text {f:?} in {raw}");
            assert_eq!(picked.len_at(f), built.len_at(f), "len_at {f:?} in {raw}");
        }
        assert!(!picked.is_built(), "declared fields built the document");
    }

    #[test]
    fn declared_fields_read_as_in_the_document_without_building_it() {
        let fields = paths(&[
            &["action"],
            &["repository", "full_name"],
            &["repository", "id"],
            &["repository"],
            &["commits"],
            &["commits", "1", "timestamp"],
            &["entry", "0", "changes", "0", "value", "id"],
            &["n"],
            &["f"],
            &["neg"],
            &["yes"],
            &["nothing"],
            &["empty"],
            &["missing", "deep"],
            &["esc"],
        ]);
        same_as_document(
            r#"{"action":"completed","repository":{"id":12,"full_name":"octo/hello","x":[1,{"a":2}]},
                "commits":[{"timestamp":"a"},{"timestamp":"b"},{}],"entry":[{"changes":[{"value":{"id":"v"}}]}],
                "n":18446744073709551615,"f":1.5e3,"neg":-7,"yes":true,"nothing":null,"empty":"",
                "esc":"a\"b\\u00e9\n"}"#,
            &fields,
        );
        // A key given twice: the last wins, whole (its first's nested fields are gone).
        same_as_document(
            r#"{"repository":{"full_name":"first","id":1},"repository":{"id":2},"action":"a","action":"b"}"#,
            &fields,
        );
        // Paths that meet the wrong kind of value.
        same_as_document(
            r#"{"repository":"flat","commits":{"1":{"timestamp":"obj"}},"entry":"x"}"#,
            &fields,
        );
        same_as_document(r#"[1,2,3]"#, &fields);
        // Fields of one object declared apart, another's between them.
        same_as_document(
            r#"{"c":"keep","a":{"b":1},"a":{"d":2}}"#,
            &paths(&[&["a", "b"], &["c"], &["a", "d"], &["c"]]),
        );
        same_as_document(r#""just a string""#, &fields);
    }

    #[test]
    fn a_field_nobody_declared_still_reads_by_building_the_document() {
        let Payload::Json(body) = Payload::parse(
            br#"{"a":{"b":"x"},"c":[true]}"#.to_vec(),
            paths(&[&["a", "b"]]),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(body.str_at(&["a", "b"]).as_deref(), Some("x"));
        // Relayed as the bytes it came as, without building it.
        assert_eq!(body.event_data().get(), r#"{"a":{"b":"x"},"c":[true]}"#);
        assert!(!body.is_built());
        assert_eq!(body.str_at(&["c", "0"]).as_deref(), Some("true"));
        assert!(body.is_built());
        assert_eq!(body.document()["a"]["b"], "x");
    }

    #[test]
    fn a_body_is_json_exactly_when_it_builds_a_value() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let mut bad_utf8 = br#"{"a":"x","skipped":"#.to_vec();
        bad_utf8.extend_from_slice(b"\"\xff\xfe\"}");
        let cases: Vec<Vec<u8>> = vec![
            // An unpaired surrogate (a string cut mid-emoji), where no path goes.
            br#"{"a":"x","head_commit":{"message":"fix \ud83d"}}"#.to_vec(),
            br#"{"a":"x","n":1e400}"#.to_vec(),
            br#"{"a":"x","n":-1e400}"#.to_vec(),
            bad_utf8,
            deep.clone().into_bytes(),
            format!(r#"{{"a":"x","d":{deep}}}"#).into_bytes(),
            br#"{"a":"x","ok":"\ud83d\ude00","n":1e300}"#.to_vec(),
            br#"{"a":"x","k\ud83d":1}"#.to_vec(),
        ];
        for raw in cases {
            let builds = serde_json::from_slice::<Value>(&raw).is_ok();
            let picked = Payload::parse(raw.clone(), paths(&[&["a"], &["n"]]));
            assert_eq!(
                matches!(picked, Ok(Payload::Json(_))),
                builds,
                "{}",
                String::from_utf8_lossy(&raw)
            );
        }
    }

    #[test]
    fn an_index_has_one_spelling() {
        let fields = paths(&[&["a", "1"], &["a", "01"], &["a", "+1"]]);
        same_as_document(r#"{"a":[0,1,2]}"#, &fields);
        same_as_document(r#"{"a":{"1":"one","01":"oh-one","+1":"plus"}}"#, &fields);
    }

    #[test]
    fn a_body_that_is_not_json_is_a_form_or_malformed() {
        for raw in [
            &b"{\"a\":1} trailing"[..],
            b"{\"a\":",
            b"MessageSid=SM1&To=%2B1",
        ] {
            let p = Payload::parse(raw.to_vec(), paths(&[&["a"]]));
            if raw.contains(&b'=') {
                assert!(matches!(p, Ok(Payload::Form(_))), "{raw:?}");
            } else {
                assert!(matches!(p, Err(WorkerError::Malformed(_))), "{raw:?}");
            }
        }
        let form = Payload::parse(b"MessageSid=SM1&To=%2B1".to_vec(), Vec::new()).unwrap();
        assert_eq!(form.str_at(&["To"]).as_deref(), Some("+1"));
    }

    #[test]
    fn real_github_payloads_read_the_same_picked_and_built() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../events/payloads");
        let mut read = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let raw = std::fs::read_to_string(&path).unwrap();
                if serde_json::from_str::<Value>(&raw).is_ok() {
                    let o = "workflow_run";
                    let fields = paths(&[
                        &["action"],
                        &[o, "conclusion"],
                        &[o, "head_branch"],
                        &[o, "updated_at"],
                        &[o, "run_attempt"],
                        &["repository", "full_name"],
                        &["repository", "id"],
                        &["sender", "login"],
                        &["commits"],
                        &["commits", "0", "timestamp"],
                        &["object_attributes", "status"],
                        &["project", "id"],
                    ]);
                    same_as_document(&raw, &fields);
                    read += 1;
                }
            }
        }
        assert!(read > 3, "only {read} payloads in {dir}");
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-c\"\\\\é]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[ab01]", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_document_reads_the_same_picked_and_built(doc in json()) {
            let fields = paths(&[
                &["a"], &["b"], &["0"], &["a", "b"], &["a", "0"], &["a", "0", "b"],
                &["b", "a", "1"], &["1", "a"], &["a", "b", "0", "1"],
            ]);
            same_as_document(&doc.to_string(), &fields);
        }
    }
}
