//! TIFF tile codecs of the streaming COG writer: the compressions (`Compression`) and the
//! predictors (`Predictor`) GDAL users name with `-co COMPRESS=` / `-co PREDICTOR=`, written
//! byte for byte as libtiff expects them (GDAL reads them back through libtiff).
//!
//! DEFLATE is libdeflate (as GDAL's own build uses); ZSTD and LZMA go through GDAL's
//! compressor registry (`CPLGetCompressor`: the same libzstd and liblzma GDAL links), LZW is
//! TIFF's own variant (MSB-first codes of 9 to 12 bits with the "early change") written here.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CString};

/// A TIFF compression tessera writes: the lossless ones of GDAL's COG driver. The lossy ones
/// (JPEG, WEBP, LERC with an error) would change class values and model outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Lzw,
    Deflate,
    Lzma,
    Zstd,
}

impl Compression {
    /// Every compression, with the name GDAL gives it.
    pub const ALL: [(Compression, &'static str); 5] = [
        (Compression::None, "NONE"),
        (Compression::Lzw, "LZW"),
        (Compression::Deflate, "DEFLATE"),
        (Compression::Lzma, "LZMA"),
        (Compression::Zstd, "ZSTD"),
    ];

    /// GDAL's name (`COMPRESS=` value).
    pub fn name(self) -> &'static str {
        Compression::ALL
            .iter()
            .find(|(c, _)| *c == self)
            .map_or("NONE", |(_, n)| n)
    }

    /// By GDAL's name, any case.
    pub fn from_name(name: &str) -> Option<Compression> {
        Compression::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(c, _)| *c)
    }

    /// The TIFF Compression tag value.
    pub fn tiff_code(self) -> u16 {
        match self {
            Compression::None => 1,
            Compression::Lzw => 5,
            Compression::Deflate => 8,
            Compression::Lzma => 34925,
            Compression::Zstd => 50000,
        }
    }

    /// The range of `LEVEL` and the level GDAL uses without one; `None`: no levels.
    pub fn levels(self) -> Option<(i32, i32, i32)> {
        match self {
            // libdeflate's levels, as GDAL built with it accepts.
            Compression::Deflate => Some((1, 12, 6)),
            Compression::Zstd => Some((1, 22, 9)),
            Compression::Lzma => Some((0, 9, 6)),
            Compression::None | Compression::Lzw => None,
        }
    }

    /// Whether a predictor can go before it (libtiff's predictor codecs).
    pub fn takes_predictor(self) -> bool {
        self != Compression::None
    }

    /// This GDAL has the compressor (ZSTD, LZMA) tessera calls through it.
    pub fn available(self) -> bool {
        match self {
            Compression::Zstd | Compression::Lzma => gdal_compressor(self).is_some(),
            _ => true,
        }
    }
}

/// GDAL's `PREDICTOR` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Predictor {
    /// None (1).
    No,
    /// The one for the data type: horizontal differencing for integers, floating point for
    /// floats (GDAL's `YES`).
    Yes,
    /// Horizontal differencing (2), on the samples' bits for floats.
    Standard,
    /// The floating-point predictor (3); integer rasters get horizontal differencing, as the
    /// floating-point one is not defined for them.
    FloatingPoint,
}

impl Predictor {
    /// Every predictor with GDAL's names (and aliases).
    pub const ALL: [(Predictor, &'static str); 6] = [
        (Predictor::Yes, "YES"),
        (Predictor::No, "NO"),
        (Predictor::Standard, "STANDARD"),
        (Predictor::FloatingPoint, "FLOATING_POINT"),
        (Predictor::Standard, "2"),
        (Predictor::FloatingPoint, "3"),
    ];

    pub fn from_name(name: &str) -> Option<Predictor> {
        Predictor::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(p, _)| *p)
    }

    /// The TIFF Predictor tag value for samples that are floats (`float`) or integers.
    pub fn tiff_code(self, float: bool) -> u16 {
        match (self, float) {
            (Predictor::No, _) => 1,
            (Predictor::Standard, _) | (Predictor::Yes | Predictor::FloatingPoint, false) => 2,
            (Predictor::Yes | Predictor::FloatingPoint, true) => 3,
        }
    }
}

/// How one raster's tiles are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileCodec {
    pub compression: Compression,
    /// The compression level (its default when `None`).
    pub level: Option<i32>,
    /// TIFF Predictor tag value: 1 none, 2 horizontal, 3 floating point.
    pub predictor: u16,
}

impl TileCodec {
    /// Encode one tile: `raw` is its little-endian samples, `width` pixels of `samples`
    /// samples of `bytes` bytes per row.
    ///
    /// # Errors
    /// GDAL's compressor failing (a message).
    pub fn encode(
        &self,
        mut raw: Vec<u8>,
        width: usize,
        samples: usize,
        bytes: usize,
    ) -> Result<Vec<u8>, String> {
        if self.compression.takes_predictor() {
            match self.predictor {
                2 => horizontal_difference(&mut raw, width * samples * bytes, samples, bytes),
                3 => floating_point_difference(&mut raw, width * samples * bytes, samples, bytes),
                _ => {}
            }
        }
        let level = self.level.or(self.compression.levels().map(|l| l.2));
        match self.compression {
            Compression::None => Ok(raw),
            Compression::Deflate => Ok(deflate(&raw, level.unwrap_or(6))),
            Compression::Lzw => Ok(lzw(&raw)),
            Compression::Zstd => gdal_compress(self.compression, &raw, "LEVEL", level),
            Compression::Lzma => gdal_compress(self.compression, &raw, "PRESET", level),
        }
    }
}

/// libtiff's horizontal differencing, row by row: every sample minus the same band's sample of
/// the pixel before it (wrapping, on `bytes`-byte little-endian integers).
fn horizontal_difference(data: &mut [u8], row_bytes: usize, samples: usize, bytes: usize) {
    for row in data.chunks_mut(row_bytes) {
        let n = row.len() / bytes;
        for i in (samples..n).rev() {
            let (a, b) = (i * bytes, (i - samples) * bytes);
            match bytes {
                1 => row[a] = row[a].wrapping_sub(row[b]),
                2 => {
                    let v = u16::from_le_bytes([row[a], row[a + 1]])
                        .wrapping_sub(u16::from_le_bytes([row[b], row[b + 1]]));
                    row[a..a + 2].copy_from_slice(&v.to_le_bytes());
                }
                _ => {
                    let get =
                        |o: usize| u32::from_le_bytes([row[o], row[o + 1], row[o + 2], row[o + 3]]);
                    let v = get(a).wrapping_sub(get(b));
                    row[a..a + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

/// libtiff's floating-point predictor (`fpDiff`), row by row: the row's samples split into
/// byte planes, most significant byte first, then every byte minus the byte `samples` before.
fn floating_point_difference(data: &mut [u8], row_bytes: usize, samples: usize, bytes: usize) {
    let mut tmp = vec![0u8; row_bytes];
    for row in data.chunks_mut(row_bytes) {
        let wc = row.len() / bytes;
        let tmp = &mut tmp[..row.len()];
        for count in 0..wc {
            for byte in 0..bytes {
                tmp[(bytes - byte - 1) * wc + count] = row[bytes * count + byte];
            }
        }
        for i in (samples..tmp.len()).rev() {
            tmp[i] = tmp[i].wrapping_sub(tmp[i - samples]);
        }
        row.copy_from_slice(tmp);
    }
}

fn deflate(raw: &[u8], level: i32) -> Vec<u8> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<(i32, libdeflater::Compressor)>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map_or(true, |(l, _)| *l != level) {
            let lvl = libdeflater::CompressionLvl::new(level)
                .unwrap_or_else(|_| libdeflater::CompressionLvl::default());
            *c = Some((level, libdeflater::Compressor::new(lvl)));
        }
        let Some((_, comp)) = c.as_mut() else {
            return Vec::new();
        };
        let mut out = vec![0u8; comp.zlib_compress_bound(raw.len())];
        // The bound always suffices; a failure cannot happen with it.
        let n = comp.zlib_compress(raw, &mut out).unwrap_or(0);
        out.truncate(n);
        out
    })
}

/// TIFF LZW (libtiff's encoder): a Clear code first, codes of 9 bits growing to 12 one code
/// early ("early change"), the table reset with a Clear code when full, EOI last; codes
/// packed most significant bit first.
pub fn lzw(raw: &[u8]) -> Vec<u8> {
    const CLEAR: u32 = 256;
    const EOI: u32 = 257;
    const FIRST: u32 = 258;
    const CODE_MAX: u32 = 4095;
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, code: u32, nbits: u32) {
            self.acc = (self.acc << nbits) | u64::from(code);
            self.n += nbits;
            while self.n >= 8 {
                self.n -= 8;
                self.out.push((self.acc >> self.n) as u8);
            }
            self.acc &= (1u64 << self.n) - 1;
        }
        fn flush(mut self) -> Vec<u8> {
            if self.n > 0 {
                self.out.push((self.acc << (8 - self.n)) as u8);
            }
            self.out
        }
    }
    let mut bits = Bits {
        out: Vec::with_capacity(raw.len() / 2 + 16),
        acc: 0,
        n: 0,
    };
    let (mut nbits, mut maxcode, mut free) = (9u32, 511u32, FIRST);
    let mut table: HashMap<u32, u32, BuildMul> = HashMap::with_capacity_and_hasher(4096, BuildMul);
    bits.put(CLEAR, nbits);
    let Some((&first, rest)) = raw.split_first() else {
        bits.put(EOI, nbits);
        return bits.flush();
    };
    let mut ent = u32::from(first);
    for &c in rest {
        let key = (ent << 8) | u32::from(c);
        if let Some(&code) = table.get(&key) {
            ent = code;
            continue;
        }
        bits.put(ent, nbits);
        ent = u32::from(c);
        table.insert(key, free);
        free += 1;
        if free == CODE_MAX - 1 {
            table.clear();
            free = FIRST;
            bits.put(CLEAR, nbits);
            nbits = 9;
            maxcode = 511;
        } else if free > maxcode {
            nbits += 1;
            maxcode = (1 << nbits) - 1;
        }
    }
    bits.put(ent, nbits);
    free += 1;
    if free == CODE_MAX - 1 {
        bits.put(CLEAR, nbits);
        nbits = 9;
    } else if free > maxcode {
        nbits += 1;
    }
    bits.put(EOI, nbits);
    bits.flush()
}

/// A multiplicative hash for LZW's (prefix code, byte) keys: the table is probed once per
/// input byte, where SipHash would dominate the encoder.
#[derive(Clone, Copy, Default)]
struct BuildMul;

#[derive(Default)]
struct MulHasher(u64);

impl std::hash::Hasher for MulHasher {
    fn finish(&self) -> u64 {
        // The product's high bits depend on every bit of the key: fold them into the low
        // bits the table indexes with.
        self.0 ^ (self.0 >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl std::hash::BuildHasher for BuildMul {
    type Hasher = MulHasher;
    fn build_hasher(&self) -> MulHasher {
        MulHasher(0)
    }
}

/// `CPLCompressor` of `cpl_compressor.h` (GDAL >= 3.4).
#[repr(C)]
struct CplCompressor {
    struct_version: c_int,
    id: *const c_char,
    kind: c_int,
    metadata: *const *const c_char,
    func: Option<
        unsafe extern "C" fn(
            input: *const c_void,
            input_size: usize,
            output: *mut *mut c_void,
            output_size: *mut usize,
            options: *const *const c_char,
            user_data: *mut c_void,
        ) -> bool,
    >,
    user_data: *mut c_void,
}

extern "C" {
    fn CPLGetCompressor(id: *const c_char) -> *const CplCompressor;
}

/// GDAL's registered compressor for ZSTD or LZMA (a static of GDAL's, valid for the process).
fn gdal_compressor(c: Compression) -> Option<&'static CplCompressor> {
    let id = match c {
        Compression::Zstd => c"zstd",
        Compression::Lzma => c"lzma",
        _ => return None,
    };
    crate::raster::init_gdal();
    // SAFETY: a NUL-terminated name; GDAL returns NULL or a pointer to a compressor it keeps
    // registered for the life of the process.
    let p = unsafe { CPLGetCompressor(id.as_ptr()) };
    // SAFETY: non-null pointers from GDAL point to a live, never-freed CPLCompressor.
    unsafe { p.as_ref() }.filter(|c| c.func.is_some())
}

fn gdal_compress(
    c: Compression,
    raw: &[u8],
    key: &str,
    level: Option<i32>,
) -> Result<Vec<u8>, String> {
    let comp =
        gdal_compressor(c).ok_or_else(|| format!("this GDAL has no {} compressor", c.name()))?;
    let func = comp
        .func
        .ok_or_else(|| format!("this GDAL has no {} compressor", c.name()))?;
    let opt = level
        .map(|l| CString::new(format!("{key}={l}")))
        .transpose()
        .map_err(|e| e.to_string())?;
    let opts: [*const c_char; 2] = [
        opt.as_ref().map_or(std::ptr::null(), |o| o.as_ptr()),
        std::ptr::null(),
    ];
    let mut out: *mut c_void = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: `raw` is valid for its length; `out` is NULL so GDAL allocates it with
    // VSIMalloc (freed below with VSIFree); `opts` is a NULL-terminated list that outlives the
    // call; `user_data` is the compressor's own.
    let ok = unsafe {
        func(
            raw.as_ptr().cast(),
            raw.len(),
            &mut out,
            &mut size,
            opts.as_ptr(),
            comp.user_data,
        )
    };
    if !ok || out.is_null() {
        if !out.is_null() {
            // SAFETY: allocated by GDAL with VSIMalloc.
            unsafe { gdal_sys::VSIFree(out) };
        }
        return Err(format!(
            "{} compression failed: {}",
            c.name(),
            crate::raster::last_cpl_message()
        ));
    }
    // SAFETY: GDAL wrote `size` bytes at `out`.
    let bytes = unsafe { std::slice::from_raw_parts(out.cast::<u8>(), size) }.to_vec();
    // SAFETY: allocated by GDAL with VSIMalloc, not used after.
    unsafe { gdal_sys::VSIFree(out) };
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-plane split and differencing of libtiff's `fpDiff`, on a row of two 1-sample
    /// float pixels written out by hand.
    #[test]
    fn floating_point_predictor_matches_libtiff_layout() {
        // 1.0 = 3f800000, 2.0 = 40000000 (little-endian in the tile).
        let mut row = vec![0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40];
        floating_point_difference(&mut row, 8, 1, 4);
        // Planes (MSB first): [3f 40] [80 00] [00 00] [00 00], then b[i] -= b[i-1].
        assert_eq!(row, vec![0x3f, 0x01, 0x40, 0x80, 0x00, 0x00, 0x00, 0x00]);
    }

    #[test]
    fn horizontal_difference_per_band() {
        // Two bands, three pixels: (10, 100) (13, 90) (20, 95).
        let mut row = vec![10, 100, 13, 90, 20, 95];
        horizontal_difference(&mut row, 6, 2, 1);
        assert_eq!(row, vec![10, 100, 3, 246, 7, 5]);
    }

    /// A hand-worked TIFF LZW stream: Clear, 'a', 'b', then code 258 ("ab"), EOI, in 9 bits.
    #[test]
    fn lzw_codes_by_hand() {
        let got = lzw(b"abab");
        // Codes 256, 97, 98, 258, 257 as 9-bit MSB-first: 45 bits -> 6 bytes.
        let codes = [256u32, 97, 98, 258, 257];
        let mut bits = String::new();
        for c in codes {
            bits.push_str(&format!("{c:09b}"));
        }
        while bits.len() % 8 != 0 {
            bits.push('0');
        }
        let want: Vec<u8> = (0..bits.len() / 8)
            .map(|i| u8::from_str_radix(&bits[i * 8..i * 8 + 8], 2).expect("bits"))
            .collect();
        assert_eq!(got, want);
    }
}
