//! Every random stream of training, derived from the seed, a purpose and indices
//! (epoch, step, sample, view) rather than drawn from one generator that runs through the
//! whole training: a run resumed from any checkpoint draws exactly what the
//! uninterrupted run would have drawn, and a cached view does not depend on the order of
//! the images.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Shuffling the training samples at the start of an epoch (a: the epoch).
pub const RNG_SHUFFLE: u64 = 1;
/// The channel-drop vector of a step (a: the global step).
pub const RNG_DROP: u64 = 2;
/// The augmentation of a training image in the full recipe (a: the epoch, b: the sample).
pub const RNG_AUGMENT: u64 = 3;
/// A cached augmented view in fast mode (a: the image's content hash, b: the view).
pub const RNG_VIEW: u64 = 4;
/// Which cached view of an image an epoch trains on (a: the epoch, b: the sample).
pub const RNG_PICK_VIEW: u64 = 5;

/// A generator for one purpose at one point of training: the same (seed, purpose, a, b)
/// always gives the same stream.
pub fn rng_for(seed: u64, purpose: u64, a: u64, b: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (i, v) in [seed, purpose, a, b].iter().enumerate() {
        key[i * 8..(i + 1) * 8].copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(*blake3::hash(&key).as_bytes())
}
