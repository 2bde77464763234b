//! The shapes of a model's weight tensors, laid end to end in one flat float32 buffer.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Largest centre we accept: 2^31 float32 values (8 GiB). Bounds every frame the server reads.
pub const MAX_PARAMS: usize = 1 << 31;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    shapes: Vec<Vec<usize>>,
    offsets: Vec<usize>,
    num_params: usize,
    hash: [u8; 32],
}

impl Layout {
    pub fn new(shapes: Vec<Vec<usize>>) -> Result<Self> {
        if shapes.is_empty() {
            return Err(Error::invalid("a layout needs at least one tensor"));
        }
        let mut offsets = Vec::with_capacity(shapes.len());
        let mut total: usize = 0;
        for shape in &shapes {
            offsets.push(total);
            let size = shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| Error::invalid(format!("tensor shape {shape:?} is too large")))?;
            total = total
                .checked_add(size)
                .filter(|&t| t <= MAX_PARAMS)
                .ok_or_else(|| Error::invalid(format!("layout exceeds {MAX_PARAMS} parameters")))?;
        }
        if total == 0 {
            return Err(Error::invalid("a layout needs at least one parameter"));
        }
        let hash = layout_hash(&shapes);
        Ok(Layout {
            shapes,
            offsets,
            num_params: total,
            hash,
        })
    }

    /// A single flat tensor of `n` parameters.
    pub fn flat(n: usize) -> Result<Self> {
        Self::new(vec![vec![n]])
    }

    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }
    pub fn num_params(&self) -> usize {
        self.num_params
    }
    /// SHA-256 over the dtype and every shape: two sides agree on it only if their tensors line up.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }
    pub fn describe(&self) -> String {
        format!(
            "{} parameters in {} tensors",
            self.num_params,
            self.shapes.len()
        )
    }
}

fn layout_hash(shapes: &[Vec<usize>]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"distkeras-plus layout v1 float32");
    h.update((shapes.len() as u64).to_le_bytes());
    for shape in shapes {
        h.update((shape.len() as u64).to_le_bytes());
        for &d in shape {
            h.update((d as u64).to_le_bytes());
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_total() {
        let l = Layout::new(vec![vec![3, 4], vec![4], vec![], vec![2, 0, 5]]).unwrap();
        assert_eq!(l.offsets(), &[0, 12, 16, 17]);
        assert_eq!(l.num_params(), 17);
    }

    #[test]
    fn hash_tells_shapes_apart_even_with_equal_totals() {
        let a = Layout::new(vec![vec![2, 3]]).unwrap();
        let b = Layout::new(vec![vec![3, 2]]).unwrap();
        let c = Layout::new(vec![vec![6]]).unwrap();
        let a2 = Layout::new(vec![vec![2, 3]]).unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        assert_eq!(a.hash(), a2.hash());
    }

    #[test]
    fn rejects_empty_and_oversized() {
        assert!(Layout::new(vec![]).is_err());
        assert!(Layout::flat(0).is_err());
        assert!(Layout::new(vec![vec![usize::MAX, 2]]).is_err());
        assert!(Layout::flat(MAX_PARAMS + 1).is_err());
    }
}
