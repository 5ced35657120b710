import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import {
  BACKOFF_CAP_MS,
  backoffDelay,
  classifyExit,
  executableProblem,
  type FileFacts,
  shouldRestart,
} from '../../../src/runtime/exit.ts'
import { instanceId, RuntimeNames } from '../../../src/runtime/names.ts'
import type { ExitInfo } from '../../../src/runtime/types.ts'

const at = new Date('2026-11-24T10:00:00Z')
const facts = (f: Partial<Parameters<typeof classifyExit>[0]>) =>
  classifyExit({ code: 0, stoppedByUs: false, oomKilled: false, memoryLimit: 16 * 1024 * 1024, at, ...f })

describe('classifyExit', () => {
  it('names the reason: exited, signal, OOM, stopped, a lost supervisor', () => {
    assert.deepEqual(facts({ code: 3 }), {
      reason: 'exited',
      code: 3,
      signal: null,
      message: 'exited with code 3',
      at: at.toISOString(),
    })
    assert.equal(facts({ code: 137 }).reason, 'signal')
    assert.equal(facts({ code: 137 }).signal, 'SIGKILL')
    assert.equal(facts({ code: 143 }).message, 'killed by SIGTERM')
    assert.equal(facts({ code: 137, oomKilled: true }).reason, 'oom-killed')
    assert.equal(facts({ code: 137, oomKilled: true }).message, 'killed: out of memory (limit 16 MiB)')
    assert.equal(facts({ code: 143, stoppedByUs: true }).reason, 'stopped')
    assert.equal(facts({ code: null }).reason, 'start-failed')
  })
})

describe('restart policy', () => {
  const exit = (reason: ExitInfo['reason'], code: number | null): ExitInfo => ({
    reason,
    code,
    signal: null,
    message: '',
    at: '',
  })
  it('always restarts anything but a stop; on-failure all but a clean exit; never nothing', () => {
    assert.equal(shouldRestart('always', exit('exited', 0)), true)
    assert.equal(shouldRestart('always', exit('stopped', 0)), false)
    assert.equal(shouldRestart('on-failure', exit('exited', 0)), false)
    assert.equal(shouldRestart('on-failure', exit('exited', 1)), true)
    assert.equal(shouldRestart('on-failure', exit('oom-killed', 137)), true)
    assert.equal(shouldRestart('on-failure', exit('not-found', null)), true)
    assert.equal(shouldRestart('never', exit('exited', 1)), false)
  })
  it('backs off exponentially, never above the cap, never decreasing', () => {
    assert.equal(backoffDelay(0), 200)
    assert.equal(backoffDelay(1), 400)
    fc.assert(
      fc.property(fc.nat(1000), (n) => {
        assert.ok(backoffDelay(n) <= BACKOFF_CAP_MS)
        assert.ok(backoffDelay(n + 1) >= backoffDelay(n))
      }),
    )
  })
})

describe('executableProblem', () => {
  const elf = (machine: number) => {
    const b = new Uint8Array(20)
    b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1])
    b[18] = machine & 0xff
    b[19] = machine >> 8
    return b
  }
  const file = (f: Partial<FileFacts>): FileFacts => ({
    kind: 'file',
    mode: 0o100755,
    uid: 0,
    gid: 0,
    head: elf(62),
    ...f,
  })
  const nobody = { uid: 65534, gid: 65534 }
  it('accepts a binary for this CPU and a script', () => {
    assert.equal(executableProblem('/x', file({}), nobody, 'x64'), undefined)
    assert.equal(
      executableProblem('/x', file({ head: new TextEncoder().encode('#!/bin/sh\n') }), nobody, 'x64'),
      undefined,
    )
  })
  it('explains every refusal', () => {
    assert.equal(executableProblem('/x', undefined, nobody)?.reason, 'not-found')
    assert.equal(executableProblem('/x', file({ kind: 'directory' }), nobody)?.reason, 'not-executable')
    assert.equal(executableProblem('/x', file({ mode: 0o100644 }), nobody)?.reason, 'not-executable')
    assert.equal(executableProblem('/x', file({ mode: 0o100744 }), nobody)?.reason, 'not-executable')
    assert.equal(executableProblem('/x', file({ mode: 0o100744 }), { uid: 0, gid: 0 }), undefined)
    const arm = executableProblem('/x', file({ head: elf(183) }), nobody, 'x64')
    assert.equal(arm?.reason, 'exec-format')
    assert.equal(arm?.message, '/x is a binary for arm64, and this node is amd64')
    assert.equal(
      executableProblem('/x', file({ head: new Uint8Array([1, 2, 3]) }), nobody)?.reason,
      'exec-format',
    )
  })
  it('never throws on any header', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 20 }), fc.nat(0o7777), (head, mode) => {
        executableProblem('/x', file({ head, mode: 0o100000 | mode }), nobody)
      }),
    )
  })
})

describe('RuntimeNames', () => {
  const n = new RuntimeNames({
    instance: instanceId('12D3KooWabc'),
    runRoot: '/run/km1s',
    dataDir: '/d',
    logRoot: '/l',
  })
  it('prefixes everything with the instance and parses its own OCI ids back', () => {
    assert.match(n.instance, /^[0-9a-f]{6}$/)
    const id = n.ociId('web-1', 'main')
    assert.equal(id, `km1s-${n.instance}-web-1.main`)
    assert.deepEqual(n.parseOciId(id), { container: 'web-1', process: 'main' })
    const other = n.instance === 'aaaaaa' ? 'bbbbbb' : 'aaaaaa'
    assert.equal(n.parseOciId(`km1s-${other}-web.main`), undefined, "another instance's id is not ours")
    assert.equal(n.parseOciId(`km1s-${n.instance}-web`), undefined)
    assert.equal(n.processCgroup('web', 'main'), `/km1s-${n.instance}/web/main`)
  })
})
