//! Reading named tensors from the checkpoint formats users bring: safetensors, and
//! PyTorch zip archives (`torch.save` of a state dict, or of a dict holding one).

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// All tensors of a checkpoint, by name, on `device`, in their stored dtype.
///
/// safetensors files are recognised by their header; everything else is read as a
/// PyTorch zip archive. `key` selects a nested state dict in a PyTorch file (e.g.
/// `state_dict` in the MS-Celeb ResNet-18 checkpoint); when `None`, a top-level
/// `state_dict` entry is used if the archive has one, else the top level.
pub fn read_tensors(
    path: &Path,
    key: Option<&str>,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let display = path.display().to_string();
    let bytes_head = read_head(path)?;
    if looks_like_safetensors(&bytes_head) {
        return candle_core::safetensors::load(path, device).map_err(|e| {
            Error::weights(&display, format!("not a readable safetensors file: {e}"))
        });
    }
    if !bytes_head.starts_with(b"PK") {
        return Err(Error::weights(
            &display,
            "neither a safetensors file nor a PyTorch zip archive (torch.save); \
             legacy non-zip pickles must be re-saved with a current torch.save",
        ));
    }
    let keys: Vec<Option<&str>> = match key {
        Some(k) => vec![Some(k)],
        None => vec![Some("state_dict"), None],
    };
    let mut last_error = None;
    for k in keys {
        match candle_core::pickle::read_all_with_key(path, k) {
            Ok(tensors) if !tensors.is_empty() => {
                return tensors
                    .into_iter()
                    .map(|(name, t)| Ok((name, t.to_device(device)?)))
                    .collect();
            }
            Ok(_) => {}
            Err(e) => last_error = Some(e),
        }
    }
    Err(Error::weights(
        &display,
        match last_error {
            Some(e) => format!("could not read tensors from this PyTorch archive: {e}"),
            None => "this PyTorch archive holds no tensors".to_string(),
        },
    ))
}

fn read_head(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = vec![0u8; 16];
    let n = file.read(&mut head).map_err(|e| Error::io(path, e))?;
    head.truncate(n);
    Ok(head)
}

/// A safetensors file starts with a little-endian u64 header length followed by `{`.
fn looks_like_safetensors(head: &[u8]) -> bool {
    head.len() >= 9
        && head[8] == b'{'
        && u64::from_le_bytes(head[..8].try_into().unwrap_or([0; 8])) < (100 << 20)
}
