import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { nextDue, nextGridPoint, onGrid } from '../../../src/common/grid.ts'

describe('nextGridPoint', () => {
  it('is the first whole multiple of the period after now', () => {
    assert.equal(nextGridPoint(1_700_000_000_250, 1_000), 1_700_000_001_000)
    assert.equal(nextGridPoint(1_700_000_001_000, 1_000), 1_700_000_002_000, 'a point is not after itself')
    fc.assert(
      fc.property(fc.nat(2 ** 45), fc.integer({ min: 1, max: 3_600_000 }), (now, period) => {
        const p = nextGridPoint(now, period)
        return p % period === 0 && p > now && p - now <= period
      }),
    )
  })
})

describe('nextDue', () => {
  it('waits for the next point after an on-time or early tick, and skips the points a late one missed', () => {
    assert.equal(nextDue(5_000, 5_002, 1_000), 6_000, 'on time')
    assert.equal(nextDue(5_000, 4_999, 1_000), 6_000, 'a millisecond early: not 5,000 again')
    assert.equal(nextDue(5_000, 7_300, 1_000), 8_000, 'late by two periods: no burst')
  })
})

describe('onGrid', () => {
  it('calls back at grid points of its period until stopped', async () => {
    const at: number[] = []
    const t = onGrid(40, () => at.push(Date.now()))
    while (at.length < 4) await new Promise((r) => setTimeout(r, 10))
    t.stop()
    const n = at.length
    await new Promise((r) => setTimeout(r, 100))
    assert.equal(at.length, n, 'nothing after stop')
  })
})
