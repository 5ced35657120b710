import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { describe, it } from 'node:test'
import { pathToFileURL } from 'node:url'
import { type BusyRule, CompilerGovernor, compilersToTurnOn, isBusy } from '../../../src/agent/compilers.ts'
import type { Logger } from '../../../src/common/logger.ts'

const RULE: BusyRule = { samples: 3, share: 0.5 }

function fakeLogger(lines: string[]): Logger {
  return { info: (_obj: unknown, msg: string) => lines.push(msg) } as unknown as Logger
}

describe('agent/compilers: the optimizing compilers come on when the agent is busy', () => {
  it('turns on only the compilers the process was started without', () => {
    assert.deepEqual(compilersToTurnOn(['--max-old-space-size=64', '--no-maglev', '--no-turbofan']), [
      '--maglev',
      '--turbofan',
    ])
    assert.deepEqual(compilersToTurnOn(['--no-opt']), ['--turbofan'])
    assert.deepEqual(compilersToTurnOn(['--no-maglev']), ['--maglev'])
    assert.deepEqual(compilersToTurnOn([]), [])
    assert.deepEqual(compilersToTurnOn(['--no-maglev', '--jitless']), [], 'no JIT at all: nothing to turn on')
    assert.deepEqual(compilersToTurnOn(['--lite-mode', '--no-turbofan']), [])
  })

  it('calls a run of busy samples busy, and nothing shorter or interrupted', () => {
    assert.equal(isBusy([0.6, 0.9, 1], RULE), true)
    assert.equal(isBusy([0.1, 0.6, 0.9, 0.5], RULE), true)
    assert.equal(isBusy([0.9, 0.9], RULE), false)
    assert.equal(isBusy([0.9, 0.4, 0.9], RULE), false)
    assert.equal(isBusy([], RULE), false)
  })

  it('turns both compilers on once, after three busy seconds in a row', () => {
    let now = 0
    let cpu = 0
    const set: string[] = []
    const lines: string[] = []
    const g = new CompilerGovernor({
      execArgv: ['--no-maglev', '--no-turbofan'],
      logger: fakeLogger(lines),
      rule: RULE,
      cpuMicros: () => cpu,
      now: () => now,
      setFlags: (f) => set.push(f),
      intervalMs: 0,
    })
    assert.equal(g.waiting, true)
    g.start()
    const second = (share: number) => {
      now += 1_000
      cpu += share * 1_000_000
      g.sample()
    }
    second(0.9)
    second(0.9)
    second(0.2) // a quiet second breaks the run
    second(0.7)
    second(0.8)
    assert.deepEqual(set, [])
    second(0.6)
    assert.deepEqual(set, ['--maglev', '--turbofan'])
    assert.equal(g.waiting, false)
    assert.deepEqual(lines, ["busy: turned V8's optimizing compilers on"])
    second(1)
    assert.equal(set.length, 2, 'once')
  })

  it('does nothing in a process started with its compilers', () => {
    const set: string[] = []
    const g = new CompilerGovernor({ execArgv: [], logger: fakeLogger([]), setFlags: (f) => set.push(f) })
    assert.equal(g.waiting, false)
    g.start()
    g.sample()
    g.stop()
    assert.deepEqual(set, [])
  })

  it('makes V8 optimize a hot function in a process started without its compilers', () => {
    // A real V8: the governor samples every 100 ms and the child spins until it acts; V8's own optimization
    // status of the hot function says whether TurboFan or Maglev compiled it (bit 16: optimized). The busy
    // share is low here because the unit tests run four at a time on two cores: this checks V8, not the rule.
    const src = pathToFileURL(new URL('../../../src/agent/compilers.ts', import.meta.url).pathname).href
    const script = `
      import { CompilerGovernor } from ${JSON.stringify(src)}
      function hot(n) { let h = 0; for (let i = 0; i < n; i++) h = (h * 31 + i) | 0; return h }
      const lines = []
      const g = new CompilerGovernor({ execArgv: process.execArgv, logger: { info: (_o, m) => lines.push(m) },
        rule: { samples: 2, share: 0.05 }, intervalMs: 100 })
      g.start()
      for (let k = 0; k < 200; k++) hot(1000)
      const before = %GetOptimizationStatus(hot)
      const spin = () => { const end = performance.now() + 50; while (performance.now() < end) hot(1000) }
      for (let i = 0; i < 400 && g.waiting; i++) { spin(); await new Promise((r) => setImmediate(r)) }
      const until = performance.now() + 10000
      while (!(%GetOptimizationStatus(hot) & 16) && performance.now() < until) hot(1000)
      g.stop()
      console.log(JSON.stringify({ before, after: %GetOptimizationStatus(hot), lines }))`
    const r = spawnSync(
      process.execPath,
      ['--no-maglev', '--no-turbofan', '--allow-natives-syntax', '--input-type=module', '-e', script],
      { encoding: 'utf8', timeout: 60_000 },
    )
    assert.equal(r.status, 0, r.stderr)
    const out = JSON.parse(r.stdout) as { before: number; after: number; lines: string[] }
    const OPTIMIZED = 16
    assert.equal(out.before & OPTIMIZED, 0, 'not optimized while the compilers are off')
    assert.deepEqual(out.lines, ["busy: turned V8's optimizing compilers on"])
    assert.notEqual(out.after & OPTIMIZED, 0, 'optimized once the governor turned them on')
  })
})
