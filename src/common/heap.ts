// A roomier heap while the agent does bulk work, a tight one the rest of the time (docs/agent.md, "Memory").
//
// The agent runs with a small old space (bin/km1s: --max-old-space-size=64) so an idle agent stays small
// on a 1 GB machine. V8 then sets the next major GC only a little above the live heap (~20 MB live, the
// next at ~22–27 MB), and work that promotes objects quickly — a pull at ~60 MB/s — pays a full
// mark-compact for every few MB: 2–3 per agent per 64 MiB pull, a fifth of its CPU with the concurrent
// marking. V8's heap growing factor can be changed while it runs and is read at every major GC, so while
// any bulk work is under way the next limit is twice the live heap; when the last one ends it goes back to
// V8's own choice, and the idle agent's heap shrinks at its next collections.
// Measured (docs/benchmarks.md, artifacts): major GCs in 8 pulls 16–22 → 7–11, swarm CPU −12 %. Kept off
// for the idle agent: there it would only keep ~5 MB more garbage. Not held during start-up either: an
// agent's start is not bound by major GCs (holding it then did not make the 10-node mesh faster).
import { setFlagsFromString } from 'node:v8'

const BULK_GROWING_PERCENT = 100

let holders = 0

/** Holds the roomier heap until the returned release is called (once; later calls do nothing). */
export function holdHeapRoom(): () => void {
  if (holders++ === 0) setFlagsFromString(`--heap-growing-percent=${BULK_GROWING_PERCENT}`)
  let released = false
  return () => {
    if (released) return
    released = true
    if (--holders === 0) setFlagsFromString('--heap-growing-percent=0')
  }
}

/** How many holders there are now (for tests). */
export function heapRoomHolders(): number {
  return holders
}
