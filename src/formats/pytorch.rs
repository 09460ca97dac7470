//! Reading named tensors from the checkpoint formats users bring: safetensors, PyTorch
//! zip archives (`torch.save` of a state dict, or of a dict holding one), and TorchScript
//! archives (`torch.jit.save`, e.g. OpenAI's `ViT-B-32.pt` as cached by the `clip` package).

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// All tensors of a checkpoint, by name, on `device`, in their stored dtype.
///
/// safetensors files are recognised by their header; everything else is read as a
/// PyTorch zip archive, or as a TorchScript archive when it holds compiled code (its
/// tensors are then named by module path, e.g. `visual.conv1.weight`). `key` selects a nested state dict in a PyTorch file (e.g.
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
    if is_torchscript(path)? {
        return read_torchscript(path, device);
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

fn open_zip(path: &Path) -> Result<zip::ZipArchive<std::io::BufReader<std::fs::File>>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        Error::weights(
            path.display().to_string(),
            format!("not a readable zip archive: {e}"),
        )
    })
}

/// `torch.jit.save` archives hold `constants.pkl` and a `code/` folder beside `data.pkl`;
/// `torch.save` archives have neither.
fn is_torchscript(path: &Path) -> Result<bool> {
    let zip = open_zip(path)?;
    let found = zip
        .file_names()
        .any(|name| name.ends_with("/constants.pkl") || name.contains("/code/"));
    Ok(found)
}

/// The parameters and buffers of a TorchScript archive, named by module path.
///
/// Its `data.pkl` pickles the module tree: each module is `BUILD(NEWOBJ(class), {attribute:
/// value})`, where a value is a submodule, a tensor (`torch._utils._rebuild_tensor_v2` of a
/// storage under `data/`), or a plain attribute that is skipped.
fn read_torchscript(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    use candle_core::pickle::Stack;
    use std::io::Read;
    let display = path.display().to_string();
    let mut zip = open_zip(path)?;
    let data_pkl = zip
        .file_names()
        .find(|name| name.ends_with("/data.pkl") && name.matches('/').count() == 1)
        .map(str::to_owned)
        .ok_or_else(|| Error::weights(&display, "TorchScript archive without a data.pkl"))?;
    let root = &data_pkl[..data_pkl.len() - "data.pkl".len()];
    let unreadable = |what: &str, e: &dyn std::fmt::Display| {
        Error::weights(
            &display,
            format!("TorchScript archive: cannot read {what}: {e}"),
        )
    };
    let mut stack = Stack::empty();
    {
        let entry = zip
            .by_name(&data_pkl)
            .map_err(|e| unreadable(&data_pkl, &e))?;
        stack
            .read_loop(&mut std::io::BufReader::new(entry))
            .map_err(|e| unreadable(&data_pkl, &e))?;
    }
    let module = stack.finalize().map_err(|e| unreadable(&data_pkl, &e))?;
    let mut infos = Vec::new();
    collect_module_tensors(module, "", Path::new(&format!("{root}data")), &mut infos);
    if infos.is_empty() {
        return Err(Error::weights(
            &display,
            "this TorchScript archive holds no tensors",
        ));
    }
    let mut tensors = HashMap::with_capacity(infos.len());
    for info in infos {
        let mut storage = Vec::new();
        zip.by_name(&info.path)
            .map_err(|e| unreadable(&info.path, &e))?
            .read_to_end(&mut storage)
            .map_err(|e| unreadable(&info.path, &e))?;
        let bytes = gather_strided(&storage, &info)
            .ok_or_else(|| unreadable(&info.name, &"its shape and strides run past its storage"))?;
        let tensor = Tensor::from_raw_buffer(&bytes, info.dtype, info.layout.dims(), device)?;
        tensors.insert(info.name, tensor);
    }
    Ok(tensors)
}

fn collect_module_tensors(
    module: candle_core::pickle::Object,
    prefix: &str,
    data_dir: &Path,
    out: &mut Vec<candle_core::pickle::TensorInfo>,
) {
    use candle_core::pickle::Object;
    let Object::Build { args, .. } = module else {
        return;
    };
    let Object::Dict(attributes) = *args else {
        return;
    };
    for (key, value) in attributes {
        let Object::Unicode(key) = key else { continue };
        let name = format!("{prefix}{key}");
        if matches!(value, Object::Build { .. }) {
            collect_module_tensors(value, &format!("{name}."), data_dir, out);
        } else if let Ok(Some(info)) = value.into_tensor_info(Object::Unicode(name), data_dir) {
            out.push(info);
        }
    }
}

/// The bytes of a tensor laid out row-major, read from its storage through its strides
/// (a TorchScript tensor may be a strided view of a shared storage). `None` when the view
/// runs past the storage.
fn gather_strided(storage: &[u8], info: &candle_core::pickle::TensorInfo) -> Option<Vec<u8>> {
    let elem = info.dtype.size_in_bytes();
    let dims = info.layout.dims();
    let strides = info.layout.stride();
    let start = info.layout.start_offset();
    let count: usize = dims.iter().product();
    if info.layout.is_contiguous() {
        return storage.get(start..start + count * elem).map(<[u8]>::to_vec);
    }
    let mut out = Vec::with_capacity(count * elem);
    let mut index = vec![0usize; dims.len()];
    for _ in 0..count {
        let offset = start + elem * index.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(storage.get(offset..offset + elem)?);
        for axis in (0..dims.len()).rev() {
            index[axis] += 1;
            if index[axis] < dims[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Some(out)
}
