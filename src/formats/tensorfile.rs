//! safetensors files with string metadata, written atomically. Feature caches,
//! checkpoints and model bundles all use this one format.

use crate::error::{Error, Result};
use crate::formats::write_atomically;
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Tensors plus the file's `__metadata__` (string to string).
pub struct TensorFile {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

/// Saves tensors (any dtype, moved to the CPU) with metadata, atomically.
pub fn save(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let on_cpu: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let metadata: HashMap<String, String> = metadata.clone().into_iter().collect();
    write_atomically(path, |tmp| {
        safetensors::serialize_to_file(&on_cpu, Some(metadata), tmp).map_err(|e| {
            Error::weights(path.display().to_string(), format!("could not write: {e}"))
        })
    })
}

/// Loads every tensor and the metadata. A truncated or foreign file gives an error that
/// says so, naming the file.
pub fn load(path: &Path, device: &Device) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let display = path.display().to_string();
    let foreign = |e: safetensors::SafeTensorError| {
        Error::weights(
            &display,
            format!("not a valid safetensors file (truncated, or another format?): {e}"),
        )
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(foreign)?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| Error::weights(&display, format!("unreadable tensors: {e}")))?;
    Ok(TensorFile { tensors, metadata })
}

/// Reads only the metadata (from the header), without the tensor data.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let header = read_header(path)?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

/// The names of the tensors in a file, read from its header alone.
pub fn tensor_names(path: &Path) -> Result<Vec<String>> {
    let header = read_header(path)?;
    Ok(header
        .as_object()
        .map(|o| o.keys().filter(|k| *k != "__metadata__").cloned().collect())
        .unwrap_or_default())
}

/// The JSON header of a safetensors file.
fn read_header(path: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    let display = path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| Error::weights(&display, "too short to be a safetensors file"))?;
    let header_len = u64::from_le_bytes(len);
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if header_len > 100 << 20 || header_len + 8 > file_len {
        return Err(Error::weights(
            &display,
            "not a safetensors file (bad header length; truncated or another format?)",
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&header)
        .map_err(|e| Error::weights(&display, format!("safetensors header is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_tensors_and_metadata() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let path = dir.path().join("x.safetensors");
        let t = Tensor::arange(0f32, 6., &Device::Cpu)?.reshape((2, 3))?;
        let tensors = HashMap::from([("a".to_string(), t)]);
        let metadata = BTreeMap::from([("k".to_string(), "v".to_string())]);
        save(&path, &tensors, &metadata)?;
        let loaded = load(&path, &Device::Cpu)?;
        assert_eq!(loaded.metadata, metadata);
        assert_eq!(read_metadata(&path)?, metadata);
        assert_eq!(
            loaded.tensors["a"].to_vec2::<f32>()?,
            vec![vec![0., 1., 2.], vec![3., 4., 5.]]
        );
        // No temporary file is left behind.
        assert_eq!(
            std::fs::read_dir(dir.path())
                .map_err(|e| Error::io("dir", e))?
                .count(),
            1
        );
        Ok(())
    }

    #[test]
    fn truncated_and_foreign_files_are_refused_clearly() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let path = dir.path().join("x.safetensors");
        let t = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu)?;
        save(
            &path,
            &HashMap::from([("a".to_string(), t)]),
            &BTreeMap::new(),
        )?;
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        std::fs::write(&path, &bytes[..bytes.len() - 10]).map_err(|e| Error::io(&path, e))?;
        let err = load(&path, &Device::Cpu)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("x.safetensors"), "{err}");
        std::fs::write(&path, b"PK\x03\x04 a zip file").map_err(|e| Error::io(&path, e))?;
        let err = load(&path, &Device::Cpu)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not a valid safetensors"), "{err}");
        assert!(read_metadata(&path).is_err());
        Ok(())
    }
}
