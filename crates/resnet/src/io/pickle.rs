//! A small, restricted unpickler: enough of Python's pickle (protocols 2-5)
//! to read what `torch.save` writes, and nothing that runs code.
//!
//! Why our own: the pickle crates on crates.io do not support persistent IDs
//! (`BINPERSID`), which is how PyTorch refers to tensor storages, and a
//! reader that only *describes* the objects it meets is the safe design: a
//! `GLOBAL` becomes a name, a `REDUCE` of an unknown callable becomes an
//! inert [`Value::Object`]. Only three callables are interpreted:
//! `collections.OrderedDict` (a dict), `torch._utils._rebuild_tensor_v2`
//! (a tensor view of a storage) and `torch._utils._rebuild_parameter` (its
//! tensor).

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
    /// A reference to a Python global, `module.name`.
    Global(String),
    /// An object built by calling something we do not interpret.
    Object(String),
    /// A tensor storage referenced by persistent id.
    Storage {
        /// The storage class name (e.g. `FloatStorage`).
        kind: String,
        /// Key of the storage's record in the archive (`data/<key>`).
        key: String,
    },
    /// A tensor: a strided view of a storage.
    Tensor {
        /// The storage class name.
        kind: String,
        /// Storage key.
        key: String,
        /// Offset in elements.
        offset: usize,
        /// Shape.
        size: Vec<usize>,
        /// Strides in elements.
        stride: Vec<usize>,
    },
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
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        if self.data.len() - self.pos < n {
            return self.err(format!("truncated: wanted {n} more bytes"));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&c| c == b'\n') else {
            return self.err("unterminated line");
        };
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).or_else(|_| self.err("invalid UTF-8"))
    }
    fn string(&mut self, n: usize) -> Result<String, PickleError> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).or_else(|_| self.err("invalid UTF-8 string"))
    }
}

/// Interprets `callable(*args)` for the few callables we understand.
fn reduce(callable: Value, args: Value) -> Value {
    let Value::Global(name) = callable else { return Value::Object("<call>".into()) };
    let args = match args {
        Value::Tuple(a) => a,
        _ => return Value::Object(name),
    };
    match name.as_str() {
        "collections.OrderedDict" | "builtins.dict" if args.is_empty() => Value::Dict(Vec::new()),
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let dims = |v: &Value| -> Option<Vec<usize>> {
                match v {
                    Value::Tuple(t) => {
                        t.iter().map(|x| if let Value::Int(i) = x { usize::try_from(*i).ok() } else { None }).collect()
                    }
                    _ => None,
                }
            };
            match (args.first(), args.get(1), args.get(2).and_then(dims), args.get(3).and_then(dims)) {
                (Some(Value::Storage { kind, key }), Some(Value::Int(off)), Some(size), Some(stride)) if *off >= 0 => {
                    Value::Tensor { kind: kind.clone(), key: key.clone(), offset: *off as usize, size, stride }
                }
                _ => Value::Object(name),
            }
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            args.into_iter().next().unwrap_or(Value::None)
        }
        _ => Value::Object(name),
    }
}

/// Storage from a persistent id `('storage', torch.XStorage, key, location, numel)`.
fn persistent(pid: Value) -> Value {
    if let Value::Tuple(t) = &pid
        && let (Some(Value::Str(tag)), Some(Value::Global(cls)), Some(key)) = (t.first(), t.get(1), t.get(2))
    {
        let key = match key {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => return Value::Object("persistent".into()),
        };
        if tag == "storage" {
            let kind = cls.rsplit('.').next().unwrap_or(cls).to_string();
            return Value::Storage { kind, key };
        }
    }
    Value::Object("persistent".into())
}

/// Most stack items / memo entries accepted (guards against hostile input).
const LIMIT: usize = 1 << 24;

/// Decodes a pickle stream.
pub fn loads(data: &[u8]) -> Result<Value, PickleError> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    macro_rules! pop {
        () => {
            match stack.pop() {
                Some(v) => v,
                None => return r.err("stack underflow"),
            }
        };
    }
    macro_rules! pop_mark {
        () => {{
            let Some(m) = marks.pop() else { return r.err("missing MARK") };
            if m > stack.len() {
                return r.err("MARK beyond the stack");
            }
            stack.split_off(m)
        }};
    }
    loop {
        if stack.len() > LIMIT || memo.len() > LIMIT {
            return r.err("pickle too large");
        }
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.u64()?; // FRAME
            }
            b'.' => return stack.pop().map_or_else(|| r.err("empty stack at STOP"), Ok),
            b'(' => marks.push(stack.len()),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(r.u16()? as i64)),
            b'J' => stack.push(Value::Int(r.u32()? as i32 as i64)),
            0x8a | 0x8b => {
                let n = if op == 0x8a { r.u8()? as usize } else { r.u32()? as usize };
                let b = r.take(n)?;
                if n > 8 {
                    stack.push(Value::Object("long".into()));
                } else {
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    stack.push(Value::Int(v));
                }
            }
            b'I' | b'L' => {
                let line = r.line()?.trim_end_matches('L');
                match line {
                    "01" => stack.push(Value::Bool(true)),
                    "00" => stack.push(Value::Bool(false)),
                    s => match s.parse::<i64>() {
                        Ok(v) => stack.push(Value::Int(v)),
                        Err(_) => return r.err(format!("bad integer literal {s:?}")),
                    },
                }
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes")))),
            b'X' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            0x8d => {
                let n = r.u64()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            b'U' | b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'T' | b'B' => {
                let n = r.u32()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            0x8e => {
                let n = r.u64()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b')' => stack.push(Value::Tuple(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b't' => {
                let items = pop_mark!();
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = pop_mark!();
                stack.push(Value::List(items));
            }
            b'd' => {
                let items = pop_mark!();
                if items.len() % 2 != 0 {
                    return r.err("odd number of items for DICT");
                }
                let mut it = items.into_iter();
                let mut d = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                stack.push(Value::Dict(d));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return r.err("stack underflow in TUPLEn");
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'q' => {
                let k = r.u8()? as u32;
                let v = stack.last().cloned().map_or_else(|| r.err("BINPUT on empty stack"), Ok)?;
                memo.insert(k, v);
            }
            b'r' => {
                let k = r.u32()?;
                let v = stack.last().cloned().map_or_else(|| r.err("LONG_BINPUT on empty stack"), Ok)?;
                memo.insert(k, v);
            }
            0x94 => {
                let k = memo.len() as u32;
                let v = stack.last().cloned().map_or_else(|| r.err("MEMOIZE on empty stack"), Ok)?;
                memo.insert(k, v);
            }
            b'h' | b'j' => {
                let k = if op == b'h' { r.u8()? as u32 } else { r.u32()? };
                match memo.get(&k) {
                    Some(v) => stack.push(v.clone()),
                    None => return r.err(format!("memo key {k} not found")),
                }
            }
            b'c' => {
                let module = r.line()?.to_string();
                let name = r.line()?;
                stack.push(Value::Global(format!("{module}.{name}")));
            }
            0x93 => {
                let name = pop!();
                let module = pop!();
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(format!("{m}.{n}"))),
                    _ => return r.err("STACK_GLOBAL needs two strings"),
                }
            }
            b'R' => {
                let args = pop!();
                let callable = pop!();
                stack.push(reduce(callable, args));
            }
            0x81 => {
                let args = pop!();
                let cls = pop!();
                stack.push(reduce(cls, args));
            }
            0x92 => {
                let _kwargs = pop!();
                let args = pop!();
                let cls = pop!();
                stack.push(reduce(cls, args));
            }
            b'Q' => {
                let pid = pop!();
                stack.push(persistent(pid));
            }
            b'b' => {
                // BUILD: object state (e.g. an OrderedDict's `_metadata`); ignored.
                pop!();
                if stack.is_empty() {
                    return r.err("BUILD on empty stack");
                }
            }
            b'a' => {
                let v = pop!();
                if let Some(Value::List(l)) = stack.last_mut() {
                    l.push(v);
                }
            }
            b'e' => {
                let items = pop_mark!();
                if let Some(Value::List(l)) = stack.last_mut() {
                    l.extend(items);
                }
            }
            b's' => {
                let v = pop!();
                let k = pop!();
                if let Some(Value::Dict(d)) = stack.last_mut() {
                    d.push((k, v));
                }
            }
            b'u' => {
                let items = pop_mark!();
                if items.len() % 2 != 0 {
                    return r.err("odd number of items for SETITEMS");
                }
                if let Some(Value::Dict(d)) = stack.last_mut() {
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                }
            }
            b'0' => {
                pop!();
            }
            b'2' => {
                let v = stack.last().cloned().map_or_else(|| r.err("DUP on empty stack"), Ok)?;
                stack.push(v);
            }
            0x90 => stack.push(Value::Object("frozenset".into())), // EMPTY_SET
            0x91 => {
                let _ = pop_mark!(); // FROZENSET
                stack.push(Value::Object("frozenset".into()));
            }
            _ => {
                r.pos -= 1;
                return r.err(format!("unsupported opcode 0x{op:02x}"));
            }
        }
    }
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
