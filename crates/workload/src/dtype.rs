//! Float dtypes and their bit-exact conversions (bf16, f16).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    BF16,
    F16,
    F32,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::BF16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }

    /// The safetensors spelling.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::BF16 => "BF16",
            Dtype::F16 => "F16",
            Dtype::F32 => "F32",
        }
    }

    pub fn from_name(s: &str) -> Option<Dtype> {
        [Dtype::BF16, Dtype::F16, Dtype::F32]
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
    }

    /// Decodes one little-endian element (`bytes.len() == self.size()`).
    pub fn decode(self, bytes: &[u8]) -> f32 {
        match self {
            Dtype::BF16 => bf16_to_f32(u16::from_le_bytes([bytes[0], bytes[1]])),
            Dtype::F16 => f16_to_f32(u16::from_le_bytes([bytes[0], bytes[1]])),
            Dtype::F32 => f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        }
    }
}

/// f32 to bf16 (the upper 16 bits), rounding to nearest even.
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040; // keep it a (quiet) NaN
    }
    let round = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// f32 to IEEE 754 half, rounding to nearest even, with subnormals, overflow to infinity and NaN.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xFF) as i32;
    let man = bits & 0x007F_FFFF;
    if exp == 0xFF {
        let nan = if man != 0 {
            0x0200 | (man >> 13) as u16
        } else {
            0
        };
        return sign | 0x7C00 | nan;
    }
    let e = exp - 127 + 15;
    if e >= 0x1F {
        return sign | 0x7C00;
    }
    if e <= 0 {
        // Subnormal half: units of 2^-24, i.e. the 24-bit significand shifted right by 14 - e.
        let shift = (14 - e) as u32;
        if shift > 24 {
            return sign;
        }
        let full = man | 0x0080_0000;
        let m = full >> shift;
        let rem = full & ((1 << shift) - 1);
        let half = 1 << (shift - 1);
        let up = rem > half || (rem == half && m & 1 == 1);
        return sign | (m + u32::from(up)) as u16;
    }
    let m = man >> 13;
    let rem = man & 0x1FFF;
    let up = rem > 0x1000 || (rem == 0x1000 && m & 1 == 1);
    // A carry out of the mantissa correctly bumps the exponent (up to infinity).
    sign | ((((e as u32) << 10) | m) + u32::from(up)) as u16
}

pub fn f16_to_f32(h: u16) -> f32 {
    let negative = h & 0x8000 != 0;
    let exp = u32::from((h >> 10) & 0x1F);
    let man = u32::from(h & 0x03FF);
    let magnitude = match exp {
        0 => man as f32 / 16_777_216.0, // exact: man * 2^-24
        0x1F => f32::from_bits(0x7F80_0000 | (man << 13)),
        _ => f32::from_bits(((exp + 127 - 15) << 23) | (man << 13)),
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// The neighbouring bf16 value above (`up`) or below.
pub(crate) fn bf16_next(bits: u16, up: bool) -> u16 {
    let negative = bits & 0x8000 != 0;
    if bits & 0x7FFF == 0 {
        return if up { 0x0001 } else { 0x8001 };
    }
    if up != negative {
        bits + 1
    } else {
        bits - 1
    }
}
