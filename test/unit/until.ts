// Waiting in unit tests. A loaded machine runs a timer late, never early: a test waits for what it expects
// to happen, polling, instead of sleeping a fixed time and hoping it happened by then.
import assert from 'node:assert/strict'

/**
 * Polls `check` every `everyMs` until it returns something truthy, and returns that; fails naming `what`
 * once `timeoutMs` has passed. The long default costs only a failing test its time.
 */
export async function until<T>(
  what: string,
  check: () => T | Promise<T>,
  timeoutMs = 10_000,
  everyMs = 10,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await check()
    if (value) return value as NonNullable<T>
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, everyMs))
  }
}

/** `until` with a file's own bound and poll interval, for the waits of a whole test file. */
export function untilWithin(timeoutMs: number, everyMs = 10) {
  return <T>(
    what: string,
    check: () => T | Promise<T>,
    ms = timeoutMs,
    every = everyMs,
  ): Promise<NonNullable<T>> => until(what, check, ms, every)
}
