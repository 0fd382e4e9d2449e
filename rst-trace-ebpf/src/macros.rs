//! Macros every module uses to read the globals userspace sets at load time and to build
//! zeroed values in place.

/// Reads a global that userspace overrides at load time: volatile, so the compiler cannot fold
/// the placeholder value.
macro_rules! global {
    ($($path:tt)+) => {
        // SAFETY: reading a static through a raw pointer; the loader fills it before load.
        unsafe { core::ptr::read_volatile(&raw const $($path)+) }
    };
}

/// An offset from [`crate::OFFSETS`]: `offset!(skc_family)`, `offset!(states.listen)`.
macro_rules! offset {
    ($field:ident) => {
        global!($crate::OFFSETS.$field)
    };
    (states.$field:ident) => {
        global!($crate::OFFSETS.states.$field)
    };
}

/// A zeroed value on the stack, as `&mut`, to be filled in place. Building one with a literal or
/// moving one out of a function compiles to calls of the byte-at-a-time memset and memcpy.
macro_rules! zeroed {
    ($name:ident: $ty:ty) => {
        let mut $name = core::mem::MaybeUninit::<$ty>::uninit();
        // SAFETY: every byte zeroed (all-zero is a valid value of the types used here); never
        // moved.
        let $name = unsafe {
            $crate::read::zero($name.as_mut_ptr());
            &mut *$name.as_mut_ptr()
        };
    };
}
