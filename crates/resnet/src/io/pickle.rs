//! A small, closed unpickler: enough of Python's pickle (protocols 2-5) to
//! read the state dicts `torch.save` writes, and nothing that runs code.
//!
//! Why our own: the pickle crates on crates.io do not support persistent IDs
//! (`BINPERSID`), which is how PyTorch refers to tensor storages, and a
//! reader that only *describes* the objects it meets is the safe design.
//!
//! It is closed the way `torch.load(weights_only=True)` is: a global must be
//! on [`ALLOWED_GLOBALS`] (what state dicts are made of) or the file is
//! refused, naming it, even when the global sits unused beside a valid state
//! dict. Calls are interpreted only for the allowed callables: dicts,
//! `torch._utils._rebuild_tensor_v2` (a tensor view of a storage), the
//! parameter rebuilds (their tensor) and `_codecs.encode` (bytes).
//!
//! Hostile streams are bounded: objects live in an arena and are shared by
//! reference, as in Python, so `DUP` and the memo copy nothing (the
//! "billion laughs" pickle stays a few nodes); the arena, the memo, the stack
//! and the marks are capped; and the final value is materialised with a cap
//! on its size (shared references expand) and its nesting depth (checked
//! iteratively while building, so no recursion can overflow the stack).

use std::collections::HashMap;

/// A decoded pickle value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A `str`.
    Str(String),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list.
    List(Vec<Value>),
    /// A dict (insertion order kept).
    Dict(Vec<(Value, Value)>),
    /// A reference to an allowed Python global, `module.name`.
    Global(String),
    /// An inert object of an allowed kind (a set, an integer beyond 64 bits).
    Object(String),
    /// A tensor storage referenced by persistent id.
    Storage {
        /// The storage class name (e.g. `FloatStorage`).
        kind: String,
        /// Key of the storage's record in the archive (`data/<key>`).
        key: String,
    },
    /// A tensor: a strided view of a storage.
    Tensor(Box<TensorRef>),
}

/// A tensor as a pickle describes it: a strided view of a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    /// The storage class name.
    pub kind: String,
    /// Storage key.
    pub key: String,
    /// Offset in elements.
    pub offset: usize,
    /// Shape.
    pub size: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// The globals a state dict may reference; any other is refused by name.
pub const ALLOWED_GLOBALS: &[&str] = &[
    "collections.OrderedDict",
    "builtins.set",
    "builtins.frozenset",
    "_codecs.encode",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch.FloatStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.DoubleStorage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ShortStorage",
    "torch.CharStorage",
    "torch.ByteStorage",
    "torch.BoolStorage",
    "torch.float32",
    "torch.float16",
    "torch.bfloat16",
    "torch.float64",
    "torch.int64",
    "torch.int32",
    "torch.int16",
    "torch.int8",
    "torch.uint8",
    "torch.bool",
];

/// Caps on what a pickle may make us hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Objects created while parsing.
    pub nodes: usize,
    /// Memo entries, stack items and open marks, each.
    pub items: usize,
    /// Values in the materialised result (shared references counted each time).
    pub values: usize,
    /// Nesting depth of the result.
    pub depth: usize,
}

impl Default for Limits {
    /// Generous for any state dict (a ResNet-152 checkpoint needs tens of
    /// thousands of objects and a depth under ten) and a few tens of MB at most.
    fn default() -> Self {
        Self { nodes: 1 << 19, items: 1 << 19, values: 1 << 18, depth: 64 }
    }
}

/// A parse failure at a byte offset.
#[derive(Debug)]
pub struct PickleError {
    /// Byte offset in the pickle stream.
    pub offset: usize,
    /// What went wrong.
    pub msg: String,
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pickle error at byte {}: {}", self.offset, self.msg)
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError { offset: self.pos, msg: msg.into() })
    }
    fn take(&mut self, n: u64) -> Result<&'a [u8], PickleError> {
        let left = self.data.len() - self.pos;
        if (left as u64) < n {
            return self.err(format!("truncated: wanted {n} more bytes, {left} left"));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.take(N as u64)?.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        self.array().map(u64::from_le_bytes)
    }
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&c| c == b'\n') else {
            return self.err("unterminated line");
        };
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).or_else(|_| self.err("invalid UTF-8"))
    }
    fn string(&mut self, n: u64) -> Result<String, PickleError> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).or_else(|_| self.err("invalid UTF-8 string"))
    }
}

type Id = u32;

/// An object of the arena; containers refer to their items by id, so one
/// object can be shared (and mutated) from the stack, the memo and others.
enum Node {
    Leaf(Value),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
}

struct Parser<'a> {
    r: Reader<'a>,
    limits: Limits,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    /// Values materialised so far (bounded by `limits.values`).
    materialised: usize,
}

impl Parser<'_> {
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, PickleError> {
        self.r.err(msg)
    }

    fn new_node(&mut self, n: Node) -> Result<Id, PickleError> {
        if self.nodes.len() >= self.limits.nodes {
            return self.err(format!("more than {} objects: not a state dict", self.limits.nodes));
        }
        self.nodes.push(n);
        Ok((self.nodes.len() - 1) as Id)
    }

    fn push(&mut self, id: Id) -> Result<(), PickleError> {
        if self.stack.len() >= self.limits.items {
            return self.err(format!("stack deeper than {} items", self.limits.items));
        }
        self.stack.push(id);
        Ok(())
    }

    fn push_node(&mut self, n: Node) -> Result<(), PickleError> {
        let id = self.new_node(n)?;
        self.push(id)
    }

    fn push_value(&mut self, v: Value) -> Result<(), PickleError> {
        self.push_node(Node::Leaf(v))
    }

    fn pop(&mut self) -> Result<Id, PickleError> {
        match self.stack.pop() {
            Some(id) => Ok(id),
            None => self.err("stack underflow"),
        }
    }

    fn top(&self) -> Result<Id, PickleError> {
        match self.stack.last() {
            Some(&id) => Ok(id),
            None => self.err("empty stack"),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let Some(m) = self.marks.pop() else { return self.err("missing MARK") };
        if m > self.stack.len() {
            return self.err("MARK beyond the stack");
        }
        Ok(self.stack.split_off(m))
    }

    fn memoize(&mut self, key: u32) -> Result<(), PickleError> {
        if self.memo.len() >= self.limits.items && !self.memo.contains_key(&key) {
            return self.err(format!("more than {} memo entries", self.limits.items));
        }
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    /// Builds the value of `id`, counting every value made against the
    /// budget and refusing nesting deeper than the limit.
    fn materialise(&mut self, id: Id, depth: usize) -> Result<Value, PickleError> {
        if depth > self.limits.depth {
            return self.err(format!("objects nested deeper than {} levels", self.limits.depth));
        }
        self.materialised += 1;
        if self.materialised > self.limits.values {
            return self.err(format!("more than {} values once shared references are expanded", self.limits.values));
        }
        let items = |p: &mut Self, ids: Vec<Id>| -> Result<Vec<Value>, PickleError> {
            ids.into_iter().map(|i| p.materialise(i, depth + 1)).collect()
        };
        Ok(match &self.nodes[id as usize] {
            Node::Leaf(v) => v.clone(),
            Node::Tuple(ids) => Value::Tuple(items(self, ids.clone())?),
            Node::List(ids) => Value::List(items(self, ids.clone())?),
            Node::Dict(pairs) => {
                let pairs = pairs.clone();
                let mut d = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    d.push((self.materialise(k, depth + 1)?, self.materialise(v, depth + 1)?));
                }
                Value::Dict(d)
            }
        })
    }

    fn global(&mut self, name: String) -> Result<(), PickleError> {
        if !ALLOWED_GLOBALS.contains(&name.as_str()) {
            return self.err(format!(
                "refusing the global `{name}`: a weights file may only reference what a state dict is made of \
                 (as torch.load(weights_only=True))"
            ));
        }
        self.push_value(Value::Global(name))
    }

    /// `callable(*args)` for the allowed callables.
    fn reduce(&mut self, callable: Id, args: Id) -> Result<(), PickleError> {
        let name = match &self.nodes[callable as usize] {
            Node::Leaf(Value::Global(name)) => name.clone(),
            _ => return self.err("call of something that is not a global"),
        };
        let args = match self.materialise(args, 0)? {
            Value::Tuple(a) => a,
            _ => return self.err(format!("call of `{name}` without an argument tuple")),
        };
        let bad = |p: &Self| p.err(format!("malformed call of `{name}`"));
        match name.as_str() {
            "collections.OrderedDict" => {
                // OrderedDict() or OrderedDict([(k, v), ...]).
                let mut pairs = Vec::new();
                if let Some(Value::List(items)) = args.first() {
                    for item in items {
                        let Value::Tuple(kv) = item else { return bad(self) };
                        let [k, v] = kv.as_slice() else { return bad(self) };
                        let k = self.new_node(Node::Leaf(k.clone()))?;
                        let v = self.new_node(Node::Leaf(v.clone()))?;
                        pairs.push((k, v));
                    }
                } else if !args.is_empty() {
                    return bad(self);
                }
                self.push_node(Node::Dict(pairs))
            }
            "builtins.set" | "builtins.frozenset" => self.push_value(Value::Object("set".into())),
            "_codecs.encode" => match args.as_slice() {
                // How protocol 2 writes Python 3 bytes: encode(str, "latin1").
                [Value::Str(s), Value::Str(enc)] if enc == "latin1" || enc == "latin-1" => {
                    match s.chars().map(|c| u8::try_from(c as u32)).collect::<Result<Vec<u8>, _>>() {
                        Ok(b) => self.push_value(Value::Bytes(b)),
                        Err(_) => bad(self),
                    }
                }
                _ => bad(self),
            },
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                let dims = |v: Option<&Value>| -> Option<Vec<usize>> {
                    match v? {
                        Value::Tuple(t) => t
                            .iter()
                            .map(|x| if let Value::Int(i) = x { usize::try_from(*i).ok() } else { None })
                            .collect(),
                        _ => None,
                    }
                };
                match (args.first(), args.get(1), dims(args.get(2)), dims(args.get(3))) {
                    (Some(Value::Storage { kind, key }), Some(&Value::Int(off)), Some(size), Some(stride))
                        if off >= 0 =>
                    {
                        let t = TensorRef { kind: kind.clone(), key: key.clone(), offset: off as usize, size, stride };
                        self.push_value(Value::Tensor(Box::new(t)))
                    }
                    _ => self.err(format!("malformed tensor (`{name}` of something that is not a storage view)")),
                }
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
                match args.into_iter().next() {
                    Some(t @ Value::Tensor(_)) => self.push_value(t),
                    _ => bad(self),
                }
            }
            _ => self.err(format!("refusing to call `{name}`")),
        }
    }

    /// A storage from a persistent id `('storage', torch.XStorage, key, location, numel)`.
    fn persistent(&mut self, pid: Id) -> Result<(), PickleError> {
        let pid = self.materialise(pid, 0)?;
        if let Value::Tuple(t) = &pid
            && let (Some(Value::Str(tag)), Some(Value::Global(cls)), Some(key)) = (t.first(), t.get(1), t.get(2))
            && tag == "storage"
            && cls.ends_with("Storage")
        {
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => return self.err("persistent id with a bad storage key"),
            };
            let kind = cls.rsplit('.').next().unwrap_or(cls).to_string();
            return self.push_value(Value::Storage { kind, key });
        }
        self.err("persistent id that is not a tensor storage")
    }

    /// Runs the stream to `STOP`; returns the id of the result.
    fn run(&mut self) -> Result<Id, PickleError> {
        loop {
            if self.marks.len() > self.limits.items {
                return self.err(format!("more than {} open marks", self.limits.items));
            }
            let op = self.r.u8()?;
            match op {
                0x80 => {
                    self.r.u8()?; // PROTO
                }
                0x95 => {
                    self.r.u64()?; // FRAME
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'1' => {
                    self.pop_mark()?; // POP_MARK
                }
                b'N' => self.push_value(Value::None)?,
                0x88 => self.push_value(Value::Bool(true))?,
                0x89 => self.push_value(Value::Bool(false))?,
                b'K' => {
                    let v = self.r.u8()?;
                    self.push_value(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = self.r.u16()?;
                    self.push_value(Value::Int(v as i64))?
                }
                b'J' => {
                    let v = self.r.u32()?;
                    self.push_value(Value::Int(v as i32 as i64))?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.r.u8()? as u64 } else { self.r.u32()? as u64 };
                    let b = self.r.take(n)?;
                    let v = if n > 8 {
                        Value::Object("long".into())
                    } else {
                        let mut v: i64 = 0;
                        for (i, &byte) in b.iter().enumerate() {
                            v |= (byte as i64) << (8 * i);
                        }
                        if n > 0 && n < 8 && b[n as usize - 1] & 0x80 != 0 {
                            v -= 1i64 << (8 * n);
                        }
                        Value::Int(v)
                    };
                    self.push_value(v)?
                }
                b'I' | b'L' => {
                    let line = self.r.line()?.trim_end_matches('L');
                    let v = match line {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        s => match s.parse::<i64>() {
                            Ok(v) => Value::Int(v),
                            Err(_) => return self.err(format!("bad integer literal {s:?}")),
                        },
                    };
                    self.push_value(v)?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.r.array()?);
                    self.push_value(Value::Float(v))?
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.r.u32()? as u64,
                        0x8c => self.r.u8()? as u64,
                        _ => self.r.u64()?,
                    };
                    let s = self.r.string(n)?;
                    self.push_value(Value::Str(s))?
                }
                b'U' | b'C' | b'T' | b'B' | 0x8e => {
                    let n = match op {
                        b'U' | b'C' => self.r.u8()? as u64,
                        b'T' | b'B' => self.r.u32()? as u64,
                        _ => self.r.u64()?,
                    };
                    let b = self.r.take(n)?.to_vec();
                    self.push_value(Value::Bytes(b))?
                }
                b')' => self.push_node(Node::Tuple(Vec::new()))?,
                b']' => self.push_node(Node::List(Vec::new()))?,
                b'}' => self.push_node(Node::Dict(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::Tuple(items))?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::List(items))?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push_node(Node::Dict(pairs))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return self.err("stack underflow in TUPLEn");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_node(Node::Tuple(items))?
                }
                b'q' => {
                    let k = self.r.u8()? as u32;
                    self.memoize(k)?
                }
                b'r' => {
                    let k = self.r.u32()?;
                    self.memoize(k)?
                }
                0x94 => self.memoize(self.memo.len() as u32)?,
                b'h' | b'j' => {
                    let k = if op == b'h' { self.r.u8()? as u32 } else { self.r.u32()? };
                    match self.memo.get(&k) {
                        Some(&id) => self.push(id)?,
                        None => return self.err(format!("memo key {k} not found")),
                    }
                }
                b'c' => {
                    let module = self.r.line()?;
                    let name = self.r.line()?;
                    self.global(format!("{module}.{name}"))?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&self.nodes[module as usize], &self.nodes[name as usize]) {
                        (Node::Leaf(Value::Str(m)), Node::Leaf(Value::Str(n))) => {
                            let g = format!("{m}.{n}");
                            self.global(g)?
                        }
                        _ => return self.err("STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.reduce(callable, args)?
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.reduce(cls, args)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.persistent(pid)?
                }
                b'b' => {
                    // BUILD: object state (e.g. an OrderedDict's `_metadata`); ignored.
                    self.pop()?;
                    self.top()?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let list = self.top()?;
                    match &mut self.nodes[list as usize] {
                        Node::List(l) => l.push(v),
                        _ => return self.err("APPEND to something that is not a list"),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    match &mut self.nodes[list as usize] {
                        Node::List(l) => l.extend(items),
                        _ => return self.err("APPENDS to something that is not a list"),
                    }
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    let pairs = self.pairs(items)?;
                    let dict = self.top()?;
                    match &mut self.nodes[dict as usize] {
                        Node::Dict(d) => d.extend(pairs),
                        _ => return self.err("SETITEM on something that is not a dict"),
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let id = self.top()?;
                    self.push(id)? // DUP: the same object, not a copy
                }
                0x8f => self.push_value(Value::Object("set".into()))?, // EMPTY_SET
                0x90 => {
                    self.pop_mark()?; // ADDITEMS (to a set, which stays inert)
                    self.top()?;
                }
                0x91 => {
                    self.pop_mark()?; // FROZENSET
                    self.push_value(Value::Object("set".into()))?
                }
                _ => {
                    self.r.pos -= 1;
                    return self.err(format!("unsupported opcode 0x{op:02x}"));
                }
            }
        }
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return self.err("odd number of items for a dict");
        }
        Ok(items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect())
    }
}

/// Decodes a pickle stream with the default [`Limits`].
pub fn loads(data: &[u8]) -> Result<Value, PickleError> {
    loads_with(data, Limits::default())
}

/// Decodes a pickle stream within `limits`.
pub fn loads_with(data: &[u8], limits: Limits) -> Result<Value, PickleError> {
    let mut p = Parser {
        r: Reader { data, pos: 0 },
        limits,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        materialised: 0,
    };
    let root = p.run()?;
    p.materialise(root, 0)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_basic_protocol2_values() {
        // pickle.dumps({'a': (1, -2, 300, 70000), 'b': [1.5, None, True]}, protocol=2)
        let data: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01(K\x01J\xfe\xff\xff\xffM,\x01J\x70\x11\x01\x00tq\x02X\x01\x00\x00\x00bq\x03]q\x04(G?\xf8\x00\x00\x00\x00\x00\x00N\x88eu.";
        let v = loads(data).unwrap();
        let Value::Dict(d) = v else { panic!("not a dict: {v:?}") };
        assert_eq!(d[0].0, Value::Str("a".into()));
        assert_eq!(d[0].1, Value::Tuple(vec![Value::Int(1), Value::Int(-2), Value::Int(300), Value::Int(70000)]));
        assert_eq!(d[1].1, Value::List(vec![Value::Float(1.5), Value::None, Value::Bool(true)]));
    }

    #[test]
    fn truncated_input_is_an_error_with_offset() {
        let data: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00";
        let e = loads(data).unwrap_err();
        assert!(e.msg.contains("truncated"), "{e}");
        assert!(loads(b"\x80\x02\xff").unwrap_err().msg.contains("unsupported opcode"));
    }
}
