//! The canonical 44-byte WAV header of PCM16 mono at [`OUTPUT_RATE`], the only WAV Tandem
//! writes (`tandem decode --wav`, stored conversation audio).

use super::OUTPUT_RATE;

/// Length of [`header`]; the samples follow it.
pub const HEADER_LEN: u64 = 44;

/// The largest data chunk a 32-bit RIFF size can describe.
pub const MAX_DATA_LEN: u32 = u32::MAX - 36;

/// The header of a file whose data chunk holds `data_len` bytes. WAV sizes are 32-bit: a
/// longer stream (over 24 hours at 24 kHz) gets the largest size that fits, so players still
/// open it and read the first day.
pub fn header(data_len: u64) -> [u8; 44] {
    let data_len = u32::try_from(data_len).map_or(MAX_DATA_LEN, |n| n.min(MAX_DATA_LEN));
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(data_len + 36).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&1u16.to_le_bytes()); // mono
    h[24..28].copy_from_slice(&OUTPUT_RATE.to_le_bytes());
    h[28..32].copy_from_slice(&(OUTPUT_RATE * 2).to_le_bytes()); // byte rate
    h[32..34].copy_from_slice(&2u16.to_le_bytes()); // block align
    h[34..36].copy_from_slice(&16u16.to_le_bytes()); // bits per sample
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// The data length a header declares, or `None` if the bytes are not [`header`]'s layout.
pub fn data_len(header: &[u8]) -> Option<u32> {
    let fixed = header.get(..44)?;
    if &fixed[0..4] != b"RIFF" || &fixed[8..16] != b"WAVEfmt " || &fixed[36..40] != b"data" {
        return None;
    }
    Some(u32::from_le_bytes([
        fixed[40], fixed[41], fixed[42], fixed[43],
    ]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_round_trips_its_length_and_saturates() {
        assert_eq!(super::data_len(&super::header(48_000)), Some(48_000));
        assert_eq!(
            super::data_len(&super::header(u64::MAX)),
            Some(super::MAX_DATA_LEN)
        );
        assert_eq!(super::data_len(b"RIFX"), None);
    }
}
