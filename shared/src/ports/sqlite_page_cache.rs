//! SQLite's own page cache, wrapped so that a commit does not walk the whole cache.
//!
//! At the end of every write transaction SQLite truncates its page cache to the database's
//! size, and its cache (`pcache1`) scans every hash slot when the largest page number it has
//! seen is far above that size. B-tree balancing swaps two pages through a borrowed page
//! number, the lock-byte page's (262,145 with 4 KB pages), so after any insert that splits a
//! page the next commit scanned the whole 64 MB cache: 13% of the writer thread's time on
//! the outbound hot path, where that thread is the one every delivery waits on. The wrapper
//! keeps its own largest page number, leaving out the borrowed one once it is given back, and
//! only passes a truncation on when a page at or above the limit may be held. Every other
//! call goes straight to SQLite's cache.
//!
//! Installed once per process, before the first connection opens; if SQLite was already
//! initialised (something opened a connection first), the default cache stays, which is
//! only slower.

use rusqlite::ffi;
use std::os::raw::{c_int, c_uint, c_void};
use std::sync::OnceLock;

/// The byte offset of the lock-byte page, 1 GiB (SQLite's `PENDING_BYTE`).
const PENDING_BYTE: c_uint = 0x4000_0000;

/// SQLite's default page cache methods, which every call of the wrapper forwards to.
struct Methods(ffi::sqlite3_pcache_methods2);

// SAFETY: the methods are plain function pointers and SQLite's `pArg` for them, which
// SQLite itself shares between every connection of the process.
unsafe impl Send for Methods {}
unsafe impl Sync for Methods {}

static DEFAULT: OnceLock<Methods> = OnceLock::new();
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Put the wrapper in front of SQLite's page cache, once per process. True when it is in
/// use; false when SQLite was initialised before the first call (the default cache stays).
pub fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        let mut default: ffi::sqlite3_pcache_methods2 = unsafe { std::mem::zeroed() };
        // SAFETY: GETPCACHE2 copies the current methods into the struct it is given.
        let got = unsafe {
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_GETPCACHE2,
                &mut default as *mut ffi::sqlite3_pcache_methods2,
            )
        };
        if got != ffi::SQLITE_OK || DEFAULT.set(Methods(default)).is_err() {
            return false;
        }
        let wrapper = ffi::sqlite3_pcache_methods2 {
            iVersion: 1,
            pArg: std::ptr::null_mut(),
            xInit: Some(init),
            xShutdown: Some(shutdown),
            xCreate: Some(create),
            xCachesize: Some(cachesize),
            xPagecount: Some(pagecount),
            xFetch: Some(fetch),
            xUnpin: Some(unpin),
            xRekey: Some(rekey),
            xTruncate: Some(truncate),
            xDestroy: Some(destroy),
            xShrink: Some(shrink),
        };
        // SAFETY: PCACHE2 copies the struct; it is refused (SQLITE_MISUSE) once SQLite is
        // initialised, and then nothing changes.
        let set = unsafe {
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_PCACHE2,
                &wrapper as *const ffi::sqlite3_pcache_methods2,
            )
        };
        set == ffi::SQLITE_OK
    })
}

/// Whether the wrapper is SQLite's page cache in this process.
pub fn installed() -> bool {
    INSTALLED.get().copied().unwrap_or(false)
}

fn default() -> &'static ffi::sqlite3_pcache_methods2 {
    &DEFAULT
        .get()
        .expect("the wrapper's methods are only installed after the default ones are kept")
        .0
}

/// One page cache: SQLite's own, and the largest page number it may hold.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    /// No page numbered above this has been fetched or rekeyed since the last truncation
    /// passed on, except `borrowed` while it is lent out.
    max_key: c_uint,
    /// The page number balancing borrows to swap two pages: the lock-byte page's, which
    /// never holds data.
    borrowed: c_uint,
    /// Whether a page is at `borrowed` now (between the first and last rekey of a swap).
    lent: bool,
}

/// The wrapper's cache behind SQLite's handle. SQLite calls one cache from one connection at
/// a time, so the fields need no lock.
unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a mut Cache {
    &mut *(p as *mut Cache)
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    let d = default();
    match d.xInit {
        Some(f) => f(d.pArg),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn shutdown(_: *mut c_void) {
    let d = default();
    if let Some(f) = d.xShutdown {
        f(d.pArg)
    }
}

unsafe extern "C" fn create(
    page_size: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let Some(make) = default().xCreate else {
        return std::ptr::null_mut();
    };
    let inner = make(page_size, extra, purgeable);
    if inner.is_null() {
        return inner;
    }
    // Every cache handed to SQLite is wrapped: the other methods take it for one.
    let borrowed = match c_uint::try_from(page_size) {
        Ok(size) if size > 0 => PENDING_BYTE / size + 1,
        _ => c_uint::MAX,
    };
    Box::into_raw(Box::new(Cache {
        inner,
        max_key: 0,
        borrowed,
        lent: false,
    })) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn cachesize(p: *mut ffi::sqlite3_pcache, n: c_int) {
    if let Some(f) = default().xCachesize {
        f(cache(p).inner, n)
    }
}

unsafe extern "C" fn pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    default().xPagecount.map_or(0, |f| f(cache(p).inner))
}

unsafe extern "C" fn fetch(
    p: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let c = cache(p);
    let Some(f) = default().xFetch else {
        return std::ptr::null_mut();
    };
    let page = f(c.inner, key, create);
    if !page.is_null() {
        c.note(key);
    }
    page
}

unsafe extern "C" fn unpin(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    if let Some(f) = default().xUnpin {
        f(cache(p).inner, page, discard)
    }
}

unsafe extern "C" fn rekey(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let c = cache(p);
    if let Some(f) = default().xRekey {
        f(c.inner, page, old, new)
    }
    if old == c.borrowed {
        c.lent = false;
    }
    c.note(new);
}

unsafe extern "C" fn truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let c = cache(p);
    if !c.may_hold_from(limit) {
        // Nothing at or above `limit` to drop: SQLite's cache would only have scanned for it.
        return;
    }
    if let Some(f) = default().xTruncate {
        f(c.inner, limit)
    }
    c.max_key = limit.saturating_sub(1);
    if c.borrowed >= limit {
        c.lent = false;
    }
}

unsafe extern "C" fn destroy(p: *mut ffi::sqlite3_pcache) {
    let c = Box::from_raw(p as *mut Cache);
    if let Some(f) = default().xDestroy {
        f(c.inner)
    }
}

unsafe extern "C" fn shrink(p: *mut ffi::sqlite3_pcache) {
    if let Some(f) = default().xShrink {
        f(cache(p).inner)
    }
}

impl Cache {
    /// A page now holds `key`.
    fn note(&mut self, key: c_uint) {
        if key == self.borrowed {
            self.lent = true;
        } else if key > self.max_key {
            self.max_key = key;
        }
    }

    /// Whether a page numbered `limit` or above may be in the cache.
    fn may_hold_from(&self, limit: c_uint) -> bool {
        self.max_key >= limit || (self.lent && self.borrowed >= limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_borrowed_page_counts_only_while_it_is_lent() {
        // A fresh cache of 4 KB pages, as `create` makes it (no SQLite cache behind it).
        let mut c = Cache {
            inner: std::ptr::null_mut(),
            max_key: 0,
            borrowed: PENDING_BYTE / 4096 + 1,
            lent: false,
        };
        for key in [1, 7, 40] {
            c.note(key);
        }
        c.note(262_145);
        assert!(c.lent);
        assert_eq!(
            c.max_key, 40,
            "the borrowed number is not a page the file has"
        );
        assert!(
            c.may_hold_from(41),
            "while lent, a truncation must go through"
        );
        c.lent = false; // given back (the swap's last rekey)
        assert!(!c.may_hold_from(41), "then nothing at or above 41 is held");
        assert!(c.may_hold_from(40));
        assert!(c.may_hold_from(1));
    }
}
