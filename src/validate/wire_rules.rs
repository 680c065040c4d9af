//! The common `buf.validate` field rules, checked over a record's wire bytes.
//!
//! protovalidate judges a record on a `DynamicMessage`: every record is decoded a second time
//! (allocating its strings and its field map) before a rule is looked at, which costs twenty
//! times what the sink's decoder spends on the record. Most rules in practice are a handful of
//! standard field rules on scalar fields (ranges, lengths, patterns, `in` lists, `uuid`, `uri`),
//! and those can be read straight off the wire. This module compiles such rules into a plan and
//! checks a record in one pass over its bytes, without allocating.
//!
//! protovalidate stays the judge. The plan only ever answers "passes" or "ask protovalidate":
//! a record it passes is one protovalidate passes (the tests hold it to that over random
//! records), and any other record (a broken rule, a value the plan is unsure of, bytes it
//! cannot read) goes to protovalidate, which gives the verdict and the violations exactly as
//! before. A message whose rules reach outside the plan's set (CEL expressions, message and
//! oneof rules, repeated, map, bytes and message-typed fields with rules, predefined rules, the
//! other well-known string formats) gets no plan: protovalidate checks each of its records.

use prost_reflect::{
    DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};

use crate::decode::wire::{zigzag32, zigzag64, Cursor, WireValue, I32, I64, LEN, VARINT};

/// Rule fields whose last values are kept on the stack; a plan with more uses the heap.
const INLINE: usize = 32;
/// Field numbers up to this are looked up in a table; higher ones by binary search.
const DENSE_LIMIT: u32 = 4096;
const NO_SLOT: u16 = u16::MAX;

/// The compiled rules of one message.
#[derive(Clone)]
pub(super) struct WireRules {
    fields: Vec<FieldCheck>,
    /// Slot in `fields` by field number (`NO_SLOT`: no rule), for numbers below `DENSE_LIMIT`.
    dense: Vec<u16>,
    /// (number, slot) of rule fields at or above `DENSE_LIMIT`, sorted.
    sparse: Vec<(u32, u16)>,
}

/// The last value of a field as it came off the wire (None: absent).
type Raw<'a> = Option<WireValue<'a>>;

/// What an absent field means for its rules.
#[derive(Debug, Clone, Copy, PartialEq)]
enum WhenAbsent {
    /// The field tracks presence: protovalidate skips its rules when it is unset.
    Skip,
    /// No presence: the rules apply to the default value.
    Default,
    /// `required`, or a proto2 `required` field (whose default may be declared): ask.
    Ask,
}

#[derive(Clone)]
struct FieldCheck {
    wire_type: u8,
    absent: WhenAbsent,
    /// `required`: the value must be set and not the zero value (stricter than protovalidate
    /// for fields with presence, which only need to be set; such records are asked about).
    required: bool,
    /// `ignore: IGNORE_IF_ZERO_VALUE` on a field without presence: protovalidate skips the
    /// rules of the zero value (the default, which the field does not hold as "set").
    skip_zero: bool,
    check: Check,
}

#[derive(Clone)]
enum Check {
    None(ScalarKind),
    Int(IntKind, Numeric<i128>),
    Float { single: bool, rules: Numeric<f64> },
    Bool(Option<bool>),
    Str(StringRules),
    Enum { rules: Numeric<i128>, defined: Option<Vec<i32>> },
}

#[derive(Clone, Copy)]
enum IntKind {
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
}

/// The kind of a field that has only `required`.
#[derive(Clone, Copy)]
enum ScalarKind {
    Int(IntKind),
    Float { single: bool },
    Bool,
    Str,
    Enum,
}

/// A scalar value read off the wire (or the default of an absent field).
#[derive(Clone, Copy)]
enum Val<'a> {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(&'a str),
}

#[derive(Clone)]
struct Numeric<T> {
    konst: Option<T>,
    /// (bound, inclusive)
    lower: Option<(T, bool)>,
    upper: Option<(T, bool)>,
    one_of: Vec<T>,
    none_of: Vec<T>,
    finite: bool,
}

/// A string field's rules, in the order they are checked (the cheap ones first).
#[derive(Clone, Default)]
struct StringRules {
    ops: Vec<StrOp>,
    /// Some rule counts characters (code points), not bytes.
    counts_chars: bool,
}

#[derive(Clone)]
enum StrOp {
    Const(String),
    Len(u64),
    MinLen(u64),
    MaxLen(u64),
    LenBytes(u64),
    MinBytes(u64),
    MaxBytes(u64),
    Prefix(String),
    Suffix(String),
    Contains(String),
    NotContains(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Uuid,
    Uri,
    Pattern(regex::Regex),
}

/// The `buf.validate` option extensions of the descriptor set.
pub(super) struct Extensions {
    pub field: Option<ExtensionDescriptor>,
    pub message: Option<ExtensionDescriptor>,
    pub oneof: Option<ExtensionDescriptor>,
}

impl Extensions {
    /// Those the descriptor set has.
    pub fn all(&self) -> impl Iterator<Item = &ExtensionDescriptor> {
        [&self.field, &self.message, &self.oneof].into_iter().flatten()
    }
}

impl WireRules {
    /// The plan of `message`'s rules, or None when one of them is outside the plan's set.
    /// `has_rules` tells whether a message type carries rules anywhere beneath it.
    pub(super) fn compile(
        message: &MessageDescriptor,
        extensions: &Extensions,
        has_rules: &dyn Fn(&MessageDescriptor) -> bool,
    ) -> Option<Self> {
        if let Some(ext) = &extensions.message {
            if message.options().has_extension(ext) {
                return None;
            }
        }
        if let Some(ext) = &extensions.oneof {
            if message.oneofs().any(|o| o.options().has_extension(ext)) {
                return None;
            }
        }
        let mut fields = Vec::new();
        let mut numbers = Vec::new();
        for field in message.fields() {
            if let Kind::Message(m) = field.kind() {
                // A message-typed field (list and map entries included) whose type has rules of
                // its own: protovalidate descends into it.
                if has_rules(&m) {
                    return None;
                }
            }
            let rules = match &extensions.field {
                Some(ext) if field.options().has_extension(ext) => field.options().get_extension(ext).into_owned(),
                _ => continue,
            };
            let Value::Message(rules) = rules else { return None };
            if let Some(check) = field_check(&field, &rules).ok()? {
                fields.push(check);
                numbers.push(field.number());
            }
        }
        let mut dense = Vec::new();
        let mut sparse = Vec::new();
        for (slot, &number) in numbers.iter().enumerate() {
            let slot = u16::try_from(slot).ok().filter(|&s| s != NO_SLOT)?;
            if number < DENSE_LIMIT {
                let at = number as usize;
                if dense.len() <= at {
                    dense.resize(at + 1, NO_SLOT);
                }
                dense[at] = slot;
            } else {
                sparse.push((number, slot));
            }
        }
        sparse.sort_unstable();
        Some(WireRules { fields, dense, sparse })
    }

    /// True when `bytes` passes every rule; false when protovalidate must be asked (a rule may
    /// be broken, or the bytes are not what the plan reads).
    pub(super) fn passes(&self, bytes: &[u8]) -> bool {
        let n = self.fields.len();
        if n <= INLINE {
            let mut last = [None; INLINE];
            self.read(bytes, &mut last[..n]) && self.judge(&last[..n])
        } else {
            let mut last = vec![None; n];
            self.read(bytes, &mut last) && self.judge(&last)
        }
    }

    #[inline]
    fn slot(&self, number: u32) -> Option<usize> {
        let slot = if number < DENSE_LIMIT {
            *self.dense.get(number as usize)?
        } else {
            let i = self.sparse.binary_search_by_key(&number, |&(n, _)| n).ok()?;
            self.sparse[i].1
        };
        (slot != NO_SLOT).then_some(slot as usize)
    }

    /// Notes the last value of every rule field (the last one wins, as protobuf merges).
    fn read<'a>(&self, bytes: &'a [u8], last: &mut [Raw<'a>]) -> bool {
        let mut c = Cursor::new(bytes);
        while !c.is_empty() {
            let Some((number, wire_type)) = c.tag() else { return false };
            let Some(slot) = self.slot(number) else {
                if c.skip(wire_type).is_none() {
                    return false;
                }
                continue;
            };
            // Another wire type for a singular field does not decode: protovalidate's decode
            // fails too, and the sink's decoder says why.
            if wire_type != self.fields[slot].wire_type {
                return false;
            }
            match c.value(wire_type) {
                Some(v) => last[slot] = Some(v),
                None => return false,
            }
        }
        true
    }

    fn judge(&self, last: &[Raw<'_>]) -> bool {
        self.fields.iter().zip(last).all(|(field, &raw)| field.passes(raw))
    }
}

impl FieldCheck {
    #[inline]
    fn passes(&self, raw: Raw<'_>) -> bool {
        if raw.is_none() {
            match self.absent {
                WhenAbsent::Skip if !self.required => return true,
                WhenAbsent::Ask | WhenAbsent::Skip => return false,
                WhenAbsent::Default if self.required => return false,
                WhenAbsent::Default => {}
            }
        }
        let Some(value) = self.check.value(raw) else { return false };
        if self.required && value.is_zero() {
            return false;
        }
        if self.skip_zero && value.is_exact_zero() {
            return true;
        }
        self.check.passes(value)
    }
}

impl Check {
    fn scalar_kind(&self) -> ScalarKind {
        match self {
            Check::None(k) => *k,
            Check::Int(k, _) => ScalarKind::Int(*k),
            Check::Float { single, .. } => ScalarKind::Float { single: *single },
            Check::Bool(_) => ScalarKind::Bool,
            Check::Str(_) => ScalarKind::Str,
            Check::Enum { .. } => ScalarKind::Enum,
        }
    }

    /// The field's value: the wire value as protobuf reads it for the field's type, or the
    /// type's default when absent; None when the bytes are not a value of the type.
    #[inline]
    fn value<'a>(&self, raw: Raw<'a>) -> Option<Val<'a>> {
        Some(match (self.scalar_kind(), raw) {
            (ScalarKind::Int(_) | ScalarKind::Enum, None) => Val::Int(0),
            (ScalarKind::Float { .. }, None) => Val::Float(0.0),
            (ScalarKind::Bool, None) => Val::Bool(false),
            (ScalarKind::Str, None) => Val::Str(""),
            (ScalarKind::Int(kind), raw) => Val::Int(int_value(kind, raw)?),
            (ScalarKind::Enum, Some(WireValue::Varint(v))) => Val::Int(i128::from(v as i32)),
            (ScalarKind::Float { single: true }, Some(WireValue::Fixed32(v))) => {
                Val::Float(f64::from(f32::from_bits(v)))
            }
            (ScalarKind::Float { single: false }, Some(WireValue::Fixed64(v))) => Val::Float(f64::from_bits(v)),
            (ScalarKind::Bool, Some(WireValue::Varint(v))) => Val::Bool(v != 0),
            (ScalarKind::Str, Some(WireValue::Len(b))) => Val::Str(simdutf8::basic::from_utf8(b).ok()?),
            _ => return None,
        })
    }

    #[inline]
    fn passes(&self, value: Val<'_>) -> bool {
        match (self, value) {
            (Check::None(_), _) => true,
            (Check::Int(_, rules), Val::Int(v)) => rules.passes(v),
            (Check::Float { rules, .. }, Val::Float(v)) => rules.passes(v) && (!rules.finite || v.is_finite()),
            (Check::Bool(konst), Val::Bool(v)) => konst.is_none_or(|k| k == v),
            (Check::Str(rules), Val::Str(s)) => rules.passes(s),
            (Check::Enum { rules, defined }, Val::Int(v)) => {
                rules.passes(v) && defined.as_ref().is_none_or(|d| d.iter().any(|&n| i128::from(n) == v))
            }
            _ => false,
        }
    }
}

impl Val<'_> {
    fn is_zero(&self) -> bool {
        match *self {
            Val::Int(v) => v == 0,
            Val::Float(v) => v == 0.0,
            Val::Bool(v) => !v,
            Val::Str(s) => s.is_empty(),
        }
    }

    /// The zero value, a float's sign included (-0.0 is not taken for the default).
    fn is_exact_zero(&self) -> bool {
        match *self {
            Val::Float(v) => v.to_bits() == 0,
            _ => self.is_zero(),
        }
    }
}

fn int_value(kind: IntKind, raw: Raw<'_>) -> Option<i128> {
    Some(match (kind, raw) {
        (IntKind::Int32, Some(WireValue::Varint(v))) => i128::from(v as i32),
        (IntKind::Int64, Some(WireValue::Varint(v))) => i128::from(v as i64),
        (IntKind::Uint32, Some(WireValue::Varint(v))) => i128::from(v as u32),
        (IntKind::Uint64, Some(WireValue::Varint(v))) => i128::from(v),
        (IntKind::Sint32, Some(WireValue::Varint(v))) => i128::from(zigzag32(v as u32)),
        (IntKind::Sint64, Some(WireValue::Varint(v))) => i128::from(zigzag64(v)),
        (IntKind::Fixed32, Some(WireValue::Fixed32(v))) => i128::from(v),
        (IntKind::Sfixed32, Some(WireValue::Fixed32(v))) => i128::from(v as i32),
        (IntKind::Fixed64, Some(WireValue::Fixed64(v))) => i128::from(v),
        (IntKind::Sfixed64, Some(WireValue::Fixed64(v))) => i128::from(v as i64),
        _ => return None,
    })
}

impl<T: PartialOrd + Copy> Numeric<T> {
    #[inline]
    fn passes(&self, v: T) -> bool {
        self.konst.is_none_or(|c| v == c)
            && self.lower.is_none_or(|(b, inclusive)| if inclusive { v >= b } else { v > b })
            && self.upper.is_none_or(|(b, inclusive)| if inclusive { v <= b } else { v < b })
            && (self.one_of.is_empty() || self.one_of.contains(&v))
            && !self.none_of.contains(&v)
    }
}

impl StringRules {
    #[inline]
    fn passes(&self, s: &str) -> bool {
        let bytes = s.len() as u64;
        let chars = if self.counts_chars { s.chars().count() as u64 } else { bytes };
        self.ops.iter().all(|op| match op {
            StrOp::Const(c) => s == c,
            StrOp::Len(n) => chars == *n,
            StrOp::MinLen(n) => chars >= *n,
            StrOp::MaxLen(n) => chars <= *n,
            StrOp::LenBytes(n) => bytes == *n,
            StrOp::MinBytes(n) => bytes >= *n,
            StrOp::MaxBytes(n) => bytes <= *n,
            StrOp::Prefix(p) => s.starts_with(p.as_str()),
            StrOp::Suffix(p) => s.ends_with(p.as_str()),
            StrOp::Contains(p) => s.contains(p.as_str()),
            StrOp::NotContains(p) => !s.contains(p.as_str()),
            StrOp::In(list) => list.iter().any(|o| o == s),
            StrOp::NotIn(list) => !list.iter().any(|o| o == s),
            StrOp::Uuid => is_uuid(s.as_bytes()),
            StrOp::Uri => is_plain_uri(s.as_bytes()),
            StrOp::Pattern(p) => p.is_match(s),
        })
    }
}

/// A rule the plan does not read.
struct Outside;

/// The check of one field with rules (None when protovalidate never looks at the field).
fn field_check(field: &FieldDescriptor, rules: &DynamicMessage) -> Result<Option<FieldCheck>, Outside> {
    if rules.unknown_fields().next().is_some() || rules.extensions().next().is_some() {
        return Err(Outside);
    }
    // A list or map with rules, or a member of a real oneof (setting another member unsets it).
    if field.is_list() || field.is_map() || field.containing_oneof().is_some_and(|o| !o.is_synthetic()) {
        return Err(Outside);
    }
    let kind = scalar_kind(&field.kind()).ok_or(Outside)?;
    let mut required = false;
    let mut if_zero = false;
    let mut check = Check::None(kind);
    for (rule, value) in rules.fields() {
        match (rule.name(), value) {
            ("required", Value::Bool(b)) => required = *b,
            ("ignore", Value::EnumNumber(0)) => {}
            ("ignore", Value::EnumNumber(1)) => if_zero = true,
            // IGNORE_ALWAYS: protovalidate never looks at the field.
            ("ignore", Value::EnumNumber(3)) => return Ok(None),
            (name, Value::Message(typed)) => check = typed_check(name, field, kind, typed).ok_or(Outside)?,
            _ => return Err(Outside),
        }
    }
    let absent = if field.is_required() {
        WhenAbsent::Ask
    } else if field.supports_presence() {
        WhenAbsent::Skip
    } else {
        WhenAbsent::Default
    };
    let wire_type = match kind {
        ScalarKind::Int(IntKind::Fixed32 | IntKind::Sfixed32) | ScalarKind::Float { single: true } => I32,
        ScalarKind::Int(IntKind::Fixed64 | IntKind::Sfixed64) | ScalarKind::Float { single: false } => I64,
        ScalarKind::Str => LEN,
        _ => VARINT,
    };
    let skip_zero = if_zero && absent == WhenAbsent::Default;
    Ok(Some(FieldCheck { wire_type, absent, required, skip_zero, check }))
}

fn scalar_kind(kind: &Kind) -> Option<ScalarKind> {
    Some(match kind {
        Kind::Int32 => ScalarKind::Int(IntKind::Int32),
        Kind::Int64 => ScalarKind::Int(IntKind::Int64),
        Kind::Uint32 => ScalarKind::Int(IntKind::Uint32),
        Kind::Uint64 => ScalarKind::Int(IntKind::Uint64),
        Kind::Sint32 => ScalarKind::Int(IntKind::Sint32),
        Kind::Sint64 => ScalarKind::Int(IntKind::Sint64),
        Kind::Fixed32 => ScalarKind::Int(IntKind::Fixed32),
        Kind::Fixed64 => ScalarKind::Int(IntKind::Fixed64),
        Kind::Sfixed32 => ScalarKind::Int(IntKind::Sfixed32),
        Kind::Sfixed64 => ScalarKind::Int(IntKind::Sfixed64),
        Kind::Float => ScalarKind::Float { single: true },
        Kind::Double => ScalarKind::Float { single: false },
        Kind::Bool => ScalarKind::Bool,
        Kind::String => ScalarKind::Str,
        Kind::Enum(_) => ScalarKind::Enum,
        Kind::Bytes | Kind::Message(_) => return None,
    })
}

/// The typed rules (`int32`, `string`, ...) of a field; None when they are not the field's
/// type or hold a rule outside the plan's set.
fn typed_check(name: &str, field: &FieldDescriptor, kind: ScalarKind, rules: &DynamicMessage) -> Option<Check> {
    if rules.unknown_fields().next().is_some() || rules.extensions().next().is_some() {
        return None;
    }
    let expected = match kind {
        ScalarKind::Int(k) => match k {
            IntKind::Int32 => "int32",
            IntKind::Int64 => "int64",
            IntKind::Uint32 => "uint32",
            IntKind::Uint64 => "uint64",
            IntKind::Sint32 => "sint32",
            IntKind::Sint64 => "sint64",
            IntKind::Fixed32 => "fixed32",
            IntKind::Fixed64 => "fixed64",
            IntKind::Sfixed32 => "sfixed32",
            IntKind::Sfixed64 => "sfixed64",
        },
        ScalarKind::Float { single: true } => "float",
        ScalarKind::Float { single: false } => "double",
        ScalarKind::Bool => "bool",
        ScalarKind::Str => "string",
        ScalarKind::Enum => "enum",
    };
    if name != expected {
        return None;
    }
    match kind {
        ScalarKind::Int(k) => Some(Check::Int(k, numeric(rules, int, false)?)),
        ScalarKind::Float { single } => Some(Check::Float { single, rules: numeric(rules, float, true)? }),
        ScalarKind::Bool => {
            let mut konst = None;
            for (rule, value) in rules.fields() {
                match (rule.name(), value) {
                    ("const", Value::Bool(b)) => konst = Some(*b),
                    ("example", _) => {}
                    _ => return None,
                }
            }
            Some(Check::Bool(konst))
        }
        ScalarKind::Str => Some(Check::Str(string_rules(rules)?)),
        ScalarKind::Enum => {
            let mut defined = None;
            let mut plain = DynamicMessage::new(rules.descriptor());
            for (rule, value) in rules.fields() {
                match (rule.name(), value) {
                    ("defined_only", Value::Bool(true)) => {
                        let Kind::Enum(e) = field.kind() else { return None };
                        defined = Some(e.values().map(|v| v.number()).collect());
                    }
                    ("defined_only", Value::Bool(false)) => {}
                    _ => plain.set_field(&rule, value.clone()),
                }
            }
            Some(Check::Enum { rules: numeric(&plain, int, false)?, defined })
        }
    }
}

fn int(value: &Value) -> Option<i128> {
    match *value {
        Value::I32(v) => Some(i128::from(v)),
        Value::I64(v) => Some(i128::from(v)),
        Value::U32(v) => Some(i128::from(v)),
        Value::U64(v) => Some(i128::from(v)),
        _ => None,
    }
}

fn float(value: &Value) -> Option<f64> {
    match *value {
        Value::F32(v) => Some(f64::from(v)),
        Value::F64(v) => Some(v),
        _ => None,
    }
}

fn numeric<T: PartialOrd + Copy>(
    rules: &DynamicMessage,
    scalar: fn(&Value) -> Option<T>,
    floating: bool,
) -> Option<Numeric<T>> {
    let mut n =
        Numeric { konst: None, lower: None, upper: None, one_of: Vec::new(), none_of: Vec::new(), finite: false };
    let list = |value: &Value| -> Option<Vec<T>> { value.as_list()?.iter().map(scalar).collect() };
    for (rule, value) in rules.fields() {
        match rule.name() {
            "const" => n.konst = Some(scalar(value)?),
            "lt" => n.upper = Some((scalar(value)?, false)),
            "lte" => n.upper = Some((scalar(value)?, true)),
            "gt" => n.lower = Some((scalar(value)?, false)),
            "gte" => n.lower = Some((scalar(value)?, true)),
            "in" => n.one_of = list(value)?,
            "not_in" => n.none_of = list(value)?,
            "finite" if floating => n.finite = value.as_bool()?,
            "example" => {}
            _ => return None,
        }
    }
    // A lower bound above the upper one means "outside the range" in protovalidate; only an
    // ordinary range is read here (a NaN bound is neither).
    if let (Some((lo, _)), Some((hi, _))) = (n.lower, n.upper) {
        if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
            return None;
        }
    }
    Some(n)
}

fn string_rules(rules: &DynamicMessage) -> Option<StringRules> {
    let text = |value: &Value| value.as_str().map(str::to_string);
    let count = |value: &Value| value.as_u64();
    let list = |value: &Value| -> Option<Vec<String>> { value.as_list()?.iter().map(text).collect() };
    let mut ops = Vec::new();
    for (rule, value) in rules.fields() {
        ops.push(match rule.name() {
            "const" => StrOp::Const(text(value)?),
            "len" => StrOp::Len(count(value)?),
            "min_len" => StrOp::MinLen(count(value)?),
            "max_len" => StrOp::MaxLen(count(value)?),
            "len_bytes" => StrOp::LenBytes(count(value)?),
            "min_bytes" => StrOp::MinBytes(count(value)?),
            "max_bytes" => StrOp::MaxBytes(count(value)?),
            // protovalidate compiles the pattern with the same regex crate.
            "pattern" => StrOp::Pattern(regex::Regex::new(value.as_str()?).ok()?),
            "prefix" => StrOp::Prefix(text(value)?),
            "suffix" => StrOp::Suffix(text(value)?),
            "contains" => StrOp::Contains(text(value)?),
            "not_contains" => StrOp::NotContains(text(value)?),
            "in" => StrOp::In(list(value)?),
            "not_in" => StrOp::NotIn(list(value)?),
            "uuid" if value.as_bool()? => StrOp::Uuid,
            "uri" if value.as_bool()? => StrOp::Uri,
            // `strict` only qualifies the well-known regexes, which have no plan.
            "strict" | "example" => continue,
            _ => return None,
        });
    }
    // Lengths and lists before the scans, the pattern last.
    ops.sort_by_key(|op| match op {
        StrOp::Len(_) | StrOp::MinLen(_) | StrOp::MaxLen(_) => 0,
        StrOp::LenBytes(_) | StrOp::MinBytes(_) | StrOp::MaxBytes(_) => 0,
        StrOp::Const(_) | StrOp::Prefix(_) | StrOp::Suffix(_) => 1,
        StrOp::In(_) | StrOp::NotIn(_) => 2,
        StrOp::Contains(_) | StrOp::NotContains(_) | StrOp::Uuid | StrOp::Uri => 3,
        StrOp::Pattern(_) => 4,
    });
    let counts_chars = ops.iter().any(|op| matches!(op, StrOp::Len(_) | StrOp::MinLen(_) | StrOp::MaxLen(_)));
    Some(StringRules { ops, counts_chars })
}

/// The characters of a plain URI's path, query and fragment besides `%` escapes and the one
/// `#`: RFC 3986's unreserved characters, sub-delimiters and `:@/?`.
const URI_TAIL: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'?'
            );
        c += 1;
    }
    table
};

/// The characters of a plain URI's host: letters, digits and `-._~`.
const URI_HOST: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        c += 1;
    }
    table
};

/// `8-4-4-4-12` hex digits, either case: protovalidate's `uuid`.
fn is_uuid(s: &[u8]) -> bool {
    if s.len() != 36 || s[8] != b'-' || s[13] != b'-' || s[18] != b'-' || s[23] != b'-' {
        return false;
    }
    // Every byte a hex digit or '-', and exactly the four dashes above: no branch per byte.
    let (mut ok, mut dashes) = (true, 0u32);
    for &c in s {
        ok &= HEX_OR_DASH[c as usize];
        dashes += u32::from(c == b'-');
    }
    ok && dashes == 4
}

const HEX_OR_DASH: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = (c as u8).is_ascii_hexdigit() || c as u8 == b'-';
        c += 1;
    }
    table
};

/// A plain absolute URI: `scheme://host[:port][/path][?query][#fragment]`, with a host of
/// letters, digits and `-._~`, a port of at most 65535, and a path, query and fragment of RFC
/// 3986's unreserved characters, sub-delimiters, `:@/?` and well-formed percent escapes. Every
/// such string is a URI under RFC 3986 (so protovalidate's `uri` accepts it); other URIs (IP
/// literals, user info, escapes in the host, URNs) are left to protovalidate.
fn is_plain_uri(s: &[u8]) -> bool {
    let mut i = 0;
    if !s.first().is_some_and(u8::is_ascii_alphabetic) {
        return false;
    }
    while i < s.len() && (s[i].is_ascii_alphanumeric() || matches!(s[i], b'+' | b'-' | b'.')) {
        i += 1;
    }
    if !s[i..].starts_with(b"://") {
        return false;
    }
    i += 3;
    let host = i;
    while i < s.len() && URI_HOST[s[i] as usize] {
        i += 1;
    }
    if i == host {
        return false;
    }
    if s.get(i) == Some(&b':') {
        i += 1;
        let digits = i;
        let mut port = 0u32;
        while i < s.len() && s[i].is_ascii_digit() && i - digits < 5 {
            port = port * 10 + u32::from(s[i] - b'0');
            i += 1;
        }
        if i == digits || port > 65535 {
            return false;
        }
    }
    if i < s.len() && !matches!(s[i], b'/' | b'?' | b'#') {
        return false;
    }
    // The common case first, without a branch per byte: no escape, no fragment.
    if s[i..].iter().fold(true, |ok, &c| ok & URI_TAIL[c as usize]) {
        return true;
    }
    let mut fragment = false;
    while i < s.len() {
        match s[i] {
            c if URI_TAIL[c as usize] => {}
            b'%' => {
                if !(s.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && s.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return false;
                }
                i += 3;
                continue;
            }
            b'#' if !fragment => fragment = true,
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_uris() {
        for ok in [
            "https://www.example-news-site.com/section/world/article-000001?ref=home",
            "http://a",
            "http://a:8080",
            "h+t.t-p://host/",
            "https://h/p%20q?x=1&y=2#frag",
            "https://h?q",
            "https://h#f",
            "https://h//a//b",
        ] {
            assert!(is_plain_uri(ok.as_bytes()), "{ok}");
        }
        for no in [
            "",
            "example.com",
            "1http://a",
            "http:/a",
            "http://",
            "http://a:",
            "http://a:65536",
            "http://a:123456",
            "http://a b",
            "http://a/%2",
            "http://a/%zz",
            "http://a#b#c",
            "http://[::1]/",
            "http://user@host/",
            "http://a/^",
            "http://a/é",
            "http://a/{x}",
            "http://a\\b",
        ] {
            assert!(!is_plain_uri(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn uuids() {
        assert!(is_uuid(b"123e4567-e89b-12d3-a456-426614174000"));
        assert!(is_uuid(b"123E4567-E89B-12D3-A456-426614174000"));
        assert!(!is_uuid(b"123e4567e89b12d3a456426614174000"));
        assert!(!is_uuid(b"123e4567-e89b-12d3-a456-42661417400g"));
        assert!(!is_uuid(b"123e4567-e89b-12d3-a456_426614174000"));
        assert!(!is_uuid(b"123e4567-e89b-12d3-a4564-26614174000"));
    }
}
