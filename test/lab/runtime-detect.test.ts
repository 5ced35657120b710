// Runs the OCI runtime probe for real and checks that it explains itself and leaves nothing behind.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { describe, it } from 'node:test'
import { detectOciRuntime, PROBE_PREFIX } from '../../src/runtime/detect.ts'
import { findNamed } from './runtime-fixture.ts'

const isRoot = process.getuid?.() === 0
const needsRoot = isRoot ? false : 'the runtime probe needs root: run the lab tests as root'

function leftovers(): string[] {
  const processes = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
    .split('\n')
    .filter((line) => line.includes(PROBE_PREFIX))
  return [
    ...findNamed('/sys/fs/cgroup', PROBE_PREFIX, 3),
    ...findNamed('/run/crun', PROBE_PREFIX, 0),
    ...findNamed('/run/runc', PROBE_PREFIX, 0),
    ...findNamed('/tmp', PROBE_PREFIX, 0),
    ...processes,
  ]
}

describe('detectOciRuntime on this machine', { skip: needsRoot }, () => {
  it('finds a runtime, explains every attempt and leaves nothing named km1s-probe behind', async () => {
    const started = performance.now()
    const choice = await detectOciRuntime({ refresh: true })
    const ms = performance.now() - started
    console.log(`probe: ${choice.reason} in ${Math.round(ms)} ms; tried ${JSON.stringify(choice.tried)}`)
    assert.notEqual(choice.runtime, 'none', choice.reason)
    assert.ok(choice.binary?.startsWith('/'))
    assert.ok(choice.tried.length >= 1)
    for (const attempt of choice.tried) {
      assert.ok(attempt.how.length > 0)
      if (!attempt.ok) assert.ok((attempt.error ?? '').length > 0, `${attempt.how} says why it failed`)
    }
    // Exactly the last attempt succeeded: the probe stops at the first runtime that works.
    assert.deepEqual(
      choice.tried.map((t) => t.ok),
      [...choice.tried.slice(0, -1).map(() => false), true],
    )
    if (choice.layout === 'hybrid' && choice.runtime === 'crun') {
      assert.match(choice.tried[0]?.error ?? '', /hybrid/)
      assert.ok(choice.wrapper.length > 0)
    }
    assert.deepEqual(leftovers(), [])
    assert.ok(ms < 5000, `took ${ms} ms`)
  })

  it('caches the answer for the process and probes again on refresh', async () => {
    const first = await detectOciRuntime()
    const started = performance.now()
    assert.equal(await detectOciRuntime(), first)
    assert.ok(performance.now() - started < 5)
    const again = await detectOciRuntime({ refresh: true })
    assert.notEqual(again, first)
    assert.equal(again.runtime, first.runtime)
    assert.deepEqual(leftovers(), [])
  })

  it('falls back to runc when crun is absent, and reports none when neither is', async () => {
    const runcOnly = await detectOciRuntime({ crun: null, refresh: true })
    assert.equal(runcOnly.runtime, 'runc')
    assert.match(runcOnly.reason, /^runc \(crun refused: crun not found\)$/)
    const nothing = await detectOciRuntime({ crun: null, runc: null, refresh: true })
    assert.equal(nothing.runtime, 'none')
    assert.match(nothing.reason, /crun not found.*runc not found/)
    // A binary that is not an OCI runtime fails with its own error line, and is still cleaned up.
    const broken = await detectOciRuntime({ crun: '/bin/false', runc: null, refresh: true })
    assert.equal(broken.runtime, 'none')
    assert.ok(broken.tried.every((t) => !t.ok && (t.error ?? '') !== ''))
    assert.deepEqual(leftovers(), [])
  })
})
