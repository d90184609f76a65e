//! The steps the parsers and the filter evaluator take, counted in tests so that property
//! tests can bound their work by a number rather than by the clock. Outside tests, nothing.

#[cfg(test)]
thread_local! {
    static STEPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// `n` more steps (characters read, entries read, filter nodes evaluated).
#[inline(always)]
pub(crate) fn step(n: usize) {
    #[cfg(test)]
    STEPS.with(|s| s.set(s.get().saturating_add(n)));
    #[cfg(not(test))]
    let _ = n;
}

/// What `f` returns, and the steps it took on this thread.
#[cfg(test)]
pub(crate) fn counted<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = STEPS.with(|s| s.get());
    let out = f();
    (out, STEPS.with(|s| s.get()) - before)
}
