//! A bounded pool of sample buffers, so the tiles in flight reuse memory instead of asking the
//! allocator for fresh megabytes per tile (which fragments the heap and lets resident memory
//! creep up with the number of tiles read, i.e. with the scene's area).

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// Spare buffers shared by a pool and the buffers it lent.
type Spare<T> = Arc<Mutex<Vec<Vec<T>>>>;

/// A shared stack of spare buffers.
#[derive(Debug)]
pub(crate) struct BufferPool<T> {
    spare: Spare<T>,
    keep: usize,
}

impl<T: Copy> BufferPool<T> {
    /// A pool that keeps at most `keep` spare buffers.
    pub(crate) fn new(keep: usize) -> Self {
        BufferPool {
            spare: Arc::new(Mutex::new(Vec::new())),
            keep,
        }
    }

    /// A buffer of `len` elements whose contents do not matter (the caller overwrites every
    /// one): a spare of that length is handed out as it is, without filling it again.
    pub(crate) fn take_overwritten(&self, len: usize, fill: T) -> PooledBuf<T> {
        let reused = self.spare.lock().ok().and_then(|mut s| s.pop());
        let mut data = reused.unwrap_or_default();
        if data.len() != len {
            data.clear();
            data.resize(len, fill);
        }
        PooledBuf {
            data,
            home: Some((Arc::clone(&self.spare), self.keep)),
        }
    }

    /// A buffer of `len` elements, all `fill`.
    pub(crate) fn take(&self, len: usize, fill: T) -> PooledBuf<T> {
        let reused = self.spare.lock().ok().and_then(|mut s| s.pop());
        let mut data = reused.unwrap_or_default();
        data.clear();
        data.resize(len, fill);
        PooledBuf {
            data,
            home: Some((Arc::clone(&self.spare), self.keep)),
        }
    }
}

/// A buffer that returns to its pool when dropped. Dereferences to a slice.
#[derive(Debug)]
pub struct PooledBuf<T> {
    data: Vec<T>,
    /// The pool to return to and how many spares it keeps.
    home: Option<(Spare<T>, usize)>,
}

impl<T> PooledBuf<T> {
    /// Detach the buffer from its pool.
    pub fn into_vec(mut self) -> Vec<T> {
        self.home = None;
        std::mem::take(&mut self.data)
    }
}

impl<T> From<Vec<T>> for PooledBuf<T> {
    fn from(data: Vec<T>) -> Self {
        PooledBuf { data, home: None }
    }
}

impl<T> Deref for PooledBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.data
    }
}

impl<T> DerefMut for PooledBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
}

impl<T> Drop for PooledBuf<T> {
    fn drop(&mut self) {
        if let Some((spare, keep)) = self.home.take() {
            if let Ok(mut s) = spare.lock() {
                if s.len() < keep {
                    s.push(std::mem::take(&mut self.data));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_up_to_the_bound() {
        let pool = BufferPool::<u8>::new(1);
        let a = pool.take(1000, 7);
        let ptr = a.as_ptr();
        assert!(a.iter().all(|&v| v == 7));
        drop(a);
        let b = pool.take(500, 1);
        assert_eq!(b.as_ptr(), ptr, "the spare buffer is reused");
        assert_eq!(b.len(), 500);
        assert!(b.iter().all(|&v| v == 1));
        let c = pool.take(10, 0);
        drop(b);
        drop(c);
        assert_eq!(pool.spare.lock().expect("lock").len(), 1);
        assert_eq!(pool.take(3, 2).into_vec(), vec![2, 2, 2]);
        // A spare of the right length comes back as it was; another length is filled.
        let d = pool.take(4, 9);
        drop(d);
        assert_eq!(pool.take_overwritten(4, 0).into_vec(), vec![9, 9, 9, 9]);
        assert_eq!(pool.take_overwritten(2, 5).into_vec(), vec![5, 5]);
    }
}
