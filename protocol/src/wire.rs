//! Bounds-checked little-endian readers and writers for frame bodies.

use crate::DecodeError;
use bytes::{BufMut, Bytes};

/// Reads fields from a body, never past its end.
pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, position: 0 }
    }

    pub fn position(&self) -> usize {
        self.position
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.position)
    }

    pub fn take(&mut self, field: &'static str, count: usize) -> Result<&'a [u8], DecodeError> {
        let have = self.remaining();
        let end = self
            .position
            .checked_add(count)
            .ok_or(DecodeError::Truncated {
                field,
                need: count,
                have,
            })?;
        let slice = self
            .bytes
            .get(self.position..end)
            .ok_or(DecodeError::Truncated {
                field,
                need: count,
                have,
            })?;
        self.position = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let slice = self.take(field, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_le_bytes(self.array(field)?))
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A `str16`: u16 byte length, then that many bytes of UTF-8.
    pub fn str16(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let length = usize::from(self.u16(field)?);
        let bytes = self.take(field, length)?;
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { field })?;
        Ok(text.to_owned())
    }

    /// A `bytes32`: u32 byte length, then that many bytes.
    pub fn bytes32(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let length = self.u32(field)?;
        let length = usize::try_from(length).map_err(|_| DecodeError::InvalidValue {
            field,
            value: u64::from(length),
        })?;
        self.take(field, length)
    }

    /// A `u32` count then that many `u32`s, the count bounded by the bytes left
    /// before anything is allocated.
    pub fn u32_list(
        &mut self,
        count_field: &'static str,
        item_field: &'static str,
    ) -> Result<Vec<u32>, DecodeError> {
        let count = self.u32(count_field)?;
        let mut items = Vec::with_capacity((count as usize).min(self.remaining() / 4));
        for _ in 0..count {
            items.push(self.u32(item_field)?);
        }
        Ok(items)
    }

    pub fn finish(&self, kind: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { kind, count }),
        }
    }
}

/// Writes a `str16`. Callers validate lengths first; longer text is cut at 65535 bytes
/// on a character boundary so the frame stays well-formed.
pub fn put_str16(out: &mut impl BufMut, text: &str) {
    let bytes = str16_bytes(text);
    out.put_u16_le(u16::try_from(bytes.len()).unwrap_or(u16::MAX));
    out.put_slice(bytes);
}

/// The bytes `put_str16` writes after the length: `text`, cut at 65535 bytes on a
/// character boundary.
pub(crate) fn str16_bytes(text: &str) -> &[u8] {
    let mut end = text.len().min(usize::from(u16::MAX));
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    text.as_bytes().get(..end).unwrap_or_default()
}

/// Writes a `bytes32`. Payloads are bounded far below 4 GiB by `max_message_bytes`.
pub fn put_bytes32(out: &mut impl BufMut, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.put_u32_le(length);
    out.put_slice(bytes.get(..length as usize).unwrap_or(bytes));
}

/// Encoded length of a `str16` for `text` (as `put_str16` writes it).
pub(crate) fn str16_len(text: &str) -> usize {
    2usize.saturating_add(text.len().min(usize::from(u16::MAX)))
}

pub(crate) fn bytes_of(slice: &[u8]) -> Bytes {
    Bytes::copy_from_slice(slice)
}
