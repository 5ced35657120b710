// The roomier heap for bulk work (src/common/heap.ts): held by count, and it does make V8 collect the old
// generation less often while held (checked in a child with the agent's own heap flags).
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { describe, it } from 'node:test'
import { heapRoomHolders, holdHeapRoom } from '../../../src/common/heap.ts'

// Promotes objects every round (they outlive two scavenges), keeping ~7 MB alive for good and ~2 MB for a
// while, and counts the major GCs of 600 rounds: once with the default growing factor, once while holding the room.
const CHILD = `
const { holdHeapRoom } = await import(process.argv.at(-1))
const { PerformanceObserver, constants } = await import('node:perf_hooks')
let major = 0
new PerformanceObserver((l) => { for (const e of l.getEntries()) if (e.detail.kind === constants.NODE_PERFORMANCE_GC_MAJOR) major++ }).observe({ entryTypes: ['gc'] })
const keep = Array.from({ length: 50000 }, (_, i) => ({ i, s: 'x'.repeat(100) }))
async function churn() {
  const before = major
  let live = []
  for (let r = 0; r < 600; r++) {
    for (let k = 0; k < 3000; k++) live.push({ a: [r, k], b: 'y' + k })
    if (live.length > 30000) live = live.slice(15000)
    await new Promise((res) => setImmediate(res))
  }
  await new Promise((res) => setTimeout(res, 50))
  return keep.length > 0 ? major - before : 0
}
const plain = await churn()
const release = holdHeapRoom()
const roomy = await churn()
release()
console.log(JSON.stringify({ plain, roomy }))
`

describe('holdHeapRoom', () => {
  it('counts holders and releases each once', () => {
    const before = heapRoomHolders()
    const a = holdHeapRoom()
    const b = holdHeapRoom()
    assert.equal(heapRoomHolders(), before + 2)
    a()
    a()
    assert.equal(heapRoomHolders(), before + 1)
    b()
    assert.equal(heapRoomHolders(), before)
  })

  it('makes major GCs rarer while held, under the agent heap flags', () => {
    const r = spawnSync(
      process.execPath,
      [
        '--max-old-space-size=64',
        '--max-semi-space-size=1',
        '--v8-pool-size=1',
        '--no-sparkplug',
        '--input-type=module',
        '-e',
        CHILD,
        new URL('../../../src/common/heap.ts', import.meta.url).href,
      ],
      { encoding: 'utf8', timeout: 60_000 },
    )
    assert.equal(r.status, 0, r.stderr)
    const { plain, roomy } = JSON.parse(r.stdout) as { plain: number; roomy: number }
    assert.ok(plain >= 4, `the workload should need several major GCs (got ${plain})`)
    // 14 against 10 on the development machine, the same in every run (the count follows the allocations).
    assert.ok(roomy <= plain - 2, `held: ${roomy} major GCs, default: ${plain}`)
  })
})
