//! The dtype of each storage of a PyTorch zip checkpoint, read from its `data.pkl` by walking
//! the pickle's opcodes — never unpickling, never calling anything it names.
//!
//! `torch.save` pickles each storage as a persistent ID, the tuple
//! `("storage", torch.<Type>Storage, "<key>", "<location>", numel)` followed by `BINPERSID`;
//! the key names the zip entry `<archive>/data/<key>`. The walk keeps a model of the stack
//! that knows only strings, class names (`GLOBAL`, `STACK_GLOBAL`), marks and tuples, plus the
//! memo (storage classes are memoized and fetched again with `BINGET`), and records the class
//! of each such tuple. Anything it does not understand ends the walk: the storages found so far
//! keep their dtype, the rest stay plain data.

use std::collections::HashMap;

/// Opcodes walked at most (a data.pkl has a few per tensor).
const MAX_OPS: usize = 50_000_000;
/// Memo entries kept at most.
const MAX_MEMO: usize = 10_000_000;

#[derive(Clone, Debug)]
enum Value {
    Str(String),
    Class(String),
    Mark,
    Tuple(Vec<Value>),
    Other,
}

/// Storage key → dtype (`BF16`, `F16`, `F32`, `F64`, or the storage class's name for others).
pub fn storage_dtypes(pkl: &[u8]) -> HashMap<String, String> {
    let mut found = HashMap::new();
    let _ = walk(pkl, &mut found);
    found
}

/// The dtype a storage class stands for.
fn dtype_of(class: &str) -> String {
    let name = class.rsplit('.').next().unwrap_or(class);
    match name {
        "BFloat16Storage" => "BF16",
        "HalfStorage" => "F16",
        "FloatStorage" => "F32",
        "DoubleStorage" => "F64",
        other => other,
    }
    .to_string()
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.data.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn uint(&mut self, n: usize) -> Option<usize> {
        let b = self.take(n)?;
        let mut v = 0u64;
        for (i, byte) in b.iter().enumerate() {
            v |= u64::from(*byte) << (8 * i);
        }
        usize::try_from(v).ok()
    }
    fn line(&mut self) -> Option<&'a [u8]> {
        let rest = self.data.get(self.at..)?;
        let n = rest.iter().position(|&b| b == b'\n')?;
        self.at += n + 1;
        Some(&rest[..n])
    }
    fn text(&mut self, n: usize) -> Option<String> {
        Some(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

fn pop_mark(stack: &mut Vec<Value>) -> Option<Vec<Value>> {
    let at = stack.iter().rposition(|v| matches!(v, Value::Mark))?;
    let items = stack.split_off(at + 1);
    stack.pop();
    Some(items)
}

fn pop_n(stack: &mut Vec<Value>, n: usize) -> Option<Vec<Value>> {
    let at = stack.len().checked_sub(n)?;
    Some(stack.split_off(at))
}

/// Walks the opcodes until `STOP`; `None` where it stops understanding them.
fn walk(pkl: &[u8], found: &mut HashMap<String, String>) -> Option<()> {
    let mut r = Reader { data: pkl, at: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<usize, Value> = HashMap::new();
    for _ in 0..MAX_OPS {
        let op = *r.take(1)?.first()?;
        match op {
            b'.' => return Some(()), // STOP
            0x80 => {
                r.take(1)?; // PROTO
            }
            0x95 => {
                r.take(8)?; // FRAME
            }
            // Strings.
            0x8c => {
                let n = r.uint(1)?;
                stack.push(Value::Str(r.text(n)?))
            }
            b'X' => {
                let n = r.uint(4)?;
                stack.push(Value::Str(r.text(n)?))
            }
            0x8d => {
                let n = r.uint(8)?;
                stack.push(Value::Str(r.text(n)?))
            }
            b'U' | b'C' => {
                let n = r.uint(1)?;
                stack.push(Value::Str(r.text(n)?))
            }
            b'T' | b'B' => {
                let n = r.uint(4)?;
                stack.push(Value::Str(r.text(n)?))
            }
            0x8e | 0x96 => {
                let n = r.uint(8)?;
                r.take(n)?;
                stack.push(Value::Other)
            }
            // Numbers and constants.
            b'J' => push_skip(&mut r, &mut stack, 4)?,
            b'K' => push_skip(&mut r, &mut stack, 1)?,
            b'M' => push_skip(&mut r, &mut stack, 2)?,
            b'G' => push_skip(&mut r, &mut stack, 8)?,
            0x8a => {
                let n = r.uint(1)?;
                push_skip(&mut r, &mut stack, n)?
            }
            0x8b => {
                let n = r.uint(4)?;
                push_skip(&mut r, &mut stack, n)?
            }
            b'I' | b'L' | b'F' | b'S' | b'V' => {
                r.line()?;
                stack.push(Value::Other)
            }
            b'N' | 0x88 | 0x89 => stack.push(Value::Other),
            // Classes.
            b'c' => {
                let module = String::from_utf8_lossy(r.line()?).into_owned();
                let name = String::from_utf8_lossy(r.line()?).into_owned();
                stack.push(Value::Class(format!("{module}.{name}")))
            }
            0x93 => {
                let parts = pop_n(&mut stack, 2)?;
                match (&parts[0], &parts[1]) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Class(format!("{m}.{n}"))),
                    _ => stack.push(Value::Other),
                }
            }
            // Memo.
            b'q' => put(&mut memo, &stack, r.uint(1)?)?,
            b'r' => put(&mut memo, &stack, r.uint(4)?)?,
            b'p' => {
                let idx = std::str::from_utf8(r.line()?).ok()?.parse().ok()?;
                put(&mut memo, &stack, idx)?
            }
            0x94 => {
                let idx = memo.len();
                put(&mut memo, &stack, idx)?
            }
            b'h' => get(&memo, &mut stack, r.uint(1)?),
            b'j' => get(&memo, &mut stack, r.uint(4)?),
            b'g' => {
                let idx = std::str::from_utf8(r.line()?).ok()?.parse().ok()?;
                get(&memo, &mut stack, idx)
            }
            // Structure.
            b'(' => stack.push(Value::Mark),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items))
            }
            0x85..=0x87 => {
                let items = pop_n(&mut stack, usize::from(op - 0x84))?;
                stack.push(Value::Tuple(items))
            }
            b']' | b'}' | 0x8f => stack.push(Value::Other),
            b'l' | b'd' | 0x91 => {
                pop_mark(&mut stack)?;
                stack.push(Value::Other)
            }
            b'e' | b'u' | 0x90 => drop(pop_mark(&mut stack)?),
            b'a' | b'0' | b'b' => drop(pop_n(&mut stack, 1)?),
            b's' => drop(pop_n(&mut stack, 2)?),
            b'1' => drop(pop_mark(&mut stack)?),
            b'2' => {
                let top = stack.last()?.clone();
                stack.push(top)
            }
            b'R' | 0x81 => {
                pop_n(&mut stack, 2)?;
                stack.push(Value::Other)
            }
            0x92 => {
                pop_n(&mut stack, 3)?;
                stack.push(Value::Other)
            }
            b'Q' => {
                if let Value::Tuple(items) = stack.pop()? {
                    record(&items, found);
                }
                stack.push(Value::Other)
            }
            _ => return None, // anything else (INST, OBJ, EXT*, PERSID, buffers): stop here
        }
    }
    None
}

fn push_skip(r: &mut Reader, stack: &mut Vec<Value>, n: usize) -> Option<()> {
    r.take(n)?;
    stack.push(Value::Other);
    Some(())
}

fn put(memo: &mut HashMap<usize, Value>, stack: &[Value], idx: usize) -> Option<()> {
    if memo.len() >= MAX_MEMO {
        return None;
    }
    memo.insert(idx, stack.last()?.clone());
    Some(())
}

fn get(memo: &HashMap<usize, Value>, stack: &mut Vec<Value>, idx: usize) {
    stack.push(memo.get(&idx).cloned().unwrap_or(Value::Other));
}

/// A persistent ID `("storage", class, key, …)`: the key's dtype.
fn record(items: &[Value], found: &mut HashMap<String, String>) {
    if let [Value::Str(tag), Value::Class(class), Value::Str(key), ..] = items {
        if tag == "storage" {
            found.insert(key.clone(), dtype_of(class));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A `data.pkl` as `torch.save` writes it (protocol 2) for an ordered dict of tensors,
    /// each `(name, storage class, numel)`: the class is memoized on first use and fetched
    /// with BINGET after, as pickle does.
    pub(crate) fn torch_pickle(tensors: &[(&str, &str, u64)]) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend_from_slice(b"ccollections\nOrderedDict\nq\x00)Rq\x01(");
        let mut memo_next = 2u8;
        let mut classes: HashMap<String, u8> = HashMap::new();
        for (key, (name, class, numel)) in tensors.iter().enumerate() {
            let short = |p: &mut Vec<u8>, s: &str| {
                p.push(b'X');
                p.extend_from_slice(&(s.len() as u32).to_le_bytes());
                p.extend_from_slice(s.as_bytes());
            };
            short(&mut p, name);
            p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\nq");
            p.push(memo_next);
            memo_next += 1;
            p.extend_from_slice(b"((");
            short(&mut p, "storage");
            match classes.get(*class) {
                Some(&m) => p.extend_from_slice(&[b'h', m]),
                None => {
                    p.extend_from_slice(format!("ctorch\n{class}\nq").as_bytes());
                    p.push(memo_next);
                    classes.insert(class.to_string(), memo_next);
                    memo_next += 1;
                }
            }
            short(&mut p, &key.to_string());
            short(&mut p, "cpu");
            p.push(b'J');
            p.extend_from_slice(&(*numel as u32).to_le_bytes());
            p.extend_from_slice(b"tQK\x00");
            p.extend_from_slice(b"J");
            p.extend_from_slice(&(*numel as u32).to_le_bytes());
            p.extend_from_slice(b"\x85K\x01\x85\x89ccollections\nOrderedDict\n)R");
            p.extend_from_slice(b"tR");
        }
        p.extend_from_slice(b"u.");
        p
    }

    #[test]
    fn storage_dtypes_come_from_the_persistent_ids() {
        let pkl = torch_pickle(&[
            ("embed.weight", "BFloat16Storage", 1000),
            ("norm.weight", "FloatStorage", 10),
            ("layers.0.weight", "BFloat16Storage", 4000),
            ("step", "LongStorage", 1),
            ("half", "HalfStorage", 8),
        ]);
        let d = storage_dtypes(&pkl);
        assert_eq!(d.len(), 5, "{d:?}");
        assert_eq!(d["0"], "BF16");
        assert_eq!(d["1"], "F32");
        assert_eq!(d["2"], "BF16", "a memoized class fetched with BINGET");
        assert_eq!(d["3"], "LongStorage");
        assert_eq!(d["4"], "F16");
    }

    #[test]
    fn unknown_opcodes_stop_the_walk_keeping_what_was_found() {
        let mut pkl = torch_pickle(&[("a", "BFloat16Storage", 4)]);
        let stop = pkl.len() - 2; // before the final SETITEMS and STOP
        pkl.truncate(stop);
        pkl.extend_from_slice(b"\xffjunk");
        assert_eq!(
            storage_dtypes(&pkl).get("0").map(String::as_str),
            Some("BF16")
        );
        assert!(storage_dtypes(b"").is_empty());
        assert!(storage_dtypes(b"\x80\x02}q\x00.").is_empty());
    }

    proptest! {
        #[test]
        fn mutated_pickles_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
            let mut pkl = torch_pickle(&[("a", "BFloat16Storage", 4), ("b", "FloatStorage", 9)]);
            for (at, b) in flips {
                let n = pkl.len();
                pkl[at % n] = b;
            }
            let keep = cut % (pkl.len() + 1);
            pkl.truncate(keep);
            let _ = storage_dtypes(&pkl);
        }
    }
}
