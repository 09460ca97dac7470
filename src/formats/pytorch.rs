//! Reading named tensors from the checkpoint formats users bring: safetensors, PyTorch
//! zip archives (`torch.save` of a state dict, or of a dict holding one), TorchScript
//! archives (`torch.jit.save`, e.g. OpenAI's `ViT-B-32.pt` as cached by the `clip` package),
//! and the legacy format of `torch.save` before PyTorch 1.6 (a sequence of pickles followed
//! by the raw storages; facenet-pytorch's MTCNN weights are stored so).

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
    if bytes_head.first() == Some(&PICKLE_PROTO) {
        return read_legacy(path, device);
    }
    if !bytes_head.starts_with(b"PK") {
        return Err(Error::weights(
            &display,
            "neither a safetensors file nor a PyTorch checkpoint (torch.save, zip or legacy)",
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

/// The first byte of a pickle of protocol 2 or later: the legacy format starts with one.
const PICKLE_PROTO: u8 = 0x80;

/// The pickle a legacy `torch.save` file starts with: protocol 2, then `LONG1` of the
/// 10-byte magic number 0x1950a86a20f9469cfc6c (little-endian), then `STOP`.
const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

/// A legacy `torch.save` file: pickles of the magic number, the protocol version and the
/// system's sizes, then the object (a state dict, or a dict holding `state_dict`) whose
/// tensors refer to storages by key, then the list of storage keys, then each storage in
/// that order as its element count (little-endian i64) and its raw little-endian bytes.
fn read_legacy(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    use candle_core::pickle::{Object, Stack};
    let display = path.display().to_string();
    let bad = |what: String| Error::weights(&display, format!("legacy PyTorch file: {what}"));
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    // The magic number's pickle is read here: it is a 10-byte integer, more than the
    // pickle reader's 64 bits.
    let body = bytes
        .strip_prefix(LEGACY_MAGIC.as_slice())
        .ok_or_else(|| bad("no magic number: not a torch.save file".into()))?;
    let mut reader = std::io::Cursor::new(body);
    let mut next_pickle = |what: &str| -> Result<Object> {
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut reader)
            .and_then(|()| stack.finalize())
            .map_err(|e| bad(format!("unreadable {what} ({e})")))
    };
    next_pickle("protocol version")?;
    next_pickle("system information")?;
    let object = match next_pickle("state dict")? {
        Object::Dict(entries) => match entries
            .iter()
            .position(|(k, _)| *k == Object::Unicode("state_dict".into()))
        {
            Some(i) => entries
                .into_iter()
                .nth(i)
                .map(|(_, v)| v)
                .unwrap_or(Object::None),
            None => Object::Dict(entries),
        },
        other => other,
    };
    let Object::Dict(entries) = object else {
        return Err(bad("the saved object is not a state dict".into()));
    };
    let mut infos = Vec::new();
    for (name, value) in entries {
        let info = value
            .into_tensor_info(name, Path::new(""))
            .map_err(|e| bad(format!("a tensor that cannot be read ({e})")))?;
        infos.extend(info);
    }
    let keys: Vec<String> = match next_pickle("storage keys")? {
        Object::List(keys) | Object::Tuple(keys) => keys
            .into_iter()
            .map(|k| {
                k.unicode()
                    .map_err(|_| bad("a storage key is not a string".into()))
            })
            .collect::<Result<_>>()?,
        _ => return Err(bad("no list of storage keys".into())),
    };
    let data_start = reader.position() as usize;
    let storages = legacy_storages(&body[data_start..], &keys, &infos)
        .map_err(|m| bad(format!("{m} (truncated?)")))?;
    infos
        .into_iter()
        .map(|info| {
            let key = info.path.trim_start_matches('/');
            let storage = storages
                .get(key)
                .ok_or_else(|| bad(format!("{}: storage {key} is missing", info.name)))?;
            let tensor =
                legacy_tensor(storage, &info).map_err(|m| bad(format!("{}: {m}", info.name)))?;
            Ok((info.name.clone(), tensor.to_device(device)?))
        })
        .collect()
}

/// The raw bytes of each storage, by key: they follow one another in the keys' order, each
/// after its element count.
fn legacy_storages<'a>(
    mut data: &'a [u8],
    keys: &[String],
    infos: &[candle_core::pickle::TensorInfo],
) -> std::result::Result<HashMap<String, &'a [u8]>, String> {
    let mut storages = HashMap::new();
    for key in keys {
        let element = infos
            .iter()
            .find(|i| i.path.trim_start_matches('/') == key)
            .map(|i| i.dtype.size_in_bytes())
            .ok_or_else(|| format!("storage {key} belongs to no tensor"))?;
        let count: [u8; 8] = data
            .get(..8)
            .and_then(|c| c.try_into().ok())
            .ok_or_else(|| format!("storage {key} has no size"))?;
        let len = usize::try_from(i64::from_le_bytes(count))
            .map_err(|_| format!("storage {key} has a negative size"))?
            * element;
        let bytes = data
            .get(8..8 + len)
            .ok_or_else(|| format!("storage {key} is shorter than its size"))?;
        storages.insert(key.clone(), bytes);
        data = &data[8 + len..];
    }
    Ok(storages)
}

/// A tensor of a state dict: a view into its storage, with any strides (facenet-pytorch's
/// convolution weights are stored transposed).
fn legacy_tensor(
    storage: &[u8],
    info: &candle_core::pickle::TensorInfo,
) -> std::result::Result<Tensor, String> {
    let layout = &info.layout;
    let dims = layout.shape().dims();
    let element = info.dtype.size_in_bytes();
    let count = layout.shape().elem_count();
    let mut bytes = Vec::with_capacity(count * element);
    let mut index = vec![0usize; dims.len()];
    for _ in 0..count {
        let offset: usize = index
            .iter()
            .zip(layout.stride())
            .map(|(i, s)| i * s)
            .sum::<usize>()
            * element
            + layout.start_offset();
        let value = storage
            .get(offset..offset + element)
            .ok_or("its view runs past its storage")?;
        bytes.extend_from_slice(value);
        // The next index in row-major order.
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            if index[d] < dims[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Tensor::from_raw_buffer(&bytes, info.dtype, dims, &Device::Cpu).map_err(|e| e.to_string())
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
