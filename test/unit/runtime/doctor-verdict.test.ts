// The doctor's oci-runtime check as it reads a probe result (src/doctor/verdicts.ts, checkOciRuntime).
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { checkOciRuntime } from '../../../src/doctor/verdicts.ts'
import type { OciRuntimeChoice } from '../../../src/runtime/detect.ts'

const crun = { path: '/usr/bin/crun', version: '1.8.1' }
const runc = { path: '/usr/sbin/runc', version: '1.1.5' }
const refused = 'cgroups in hybrid mode not supported, drop all controllers from cgroupv2'

function choice(overrides: Partial<OciRuntimeChoice>): OciRuntimeChoice {
  return { runtime: 'none', binary: null, wrapper: [], reason: '', tried: [], layout: 'hybrid', ...overrides }
}

describe('doctor oci-runtime check from the probe', () => {
  it('says crun runs through the private mount namespace on a hybrid layout', () => {
    const c = checkOciRuntime(
      crun,
      runc,
      null,
      choice({ runtime: 'crun', binary: crun.path, wrapper: ['/usr/bin/unshare', '-m'] }),
    )
    assert.equal(c.level, 'ok')
    assert.match(
      c.detail,
      /crun 1\.8\.1 in a private mount namespace without the cgroup2 mount \(hybrid layout/,
    )
  })

  it('says crun runs as it is', () => {
    const c = checkOciRuntime(crun, null, null, choice({ runtime: 'crun', binary: crun.path, layout: 'v2' }))
    assert.equal(c.level, 'ok')
    assert.match(c.detail, /crun 1\.8\.1: it runs as it is/)
  })

  it('warns when runc stands in, with crun’s refusal', () => {
    const c = checkOciRuntime(
      crun,
      runc,
      null,
      choice({ runtime: 'runc', binary: runc.path, reason: `runc (crun refused: ${refused})` }),
    )
    assert.equal(c.level, 'warn')
    assert.equal(c.detail, `km1s will use runc 1.1.5 (crun refused: ${refused})`)
    const noCrun = checkOciRuntime(
      null,
      runc,
      null,
      choice({ runtime: 'runc', reason: 'runc (crun refused: crun not found)' }),
    )
    assert.match(noCrun.fix ?? '', /apt-get install .* crun$/)
  })

  it('fails with every attempt when nothing runs, and warns "needs root" when it could not probe', () => {
    const none = checkOciRuntime(
      crun,
      null,
      null,
      choice({
        tried: [{ how: 'crun run', ok: false, error: refused, ms: 3 }],
        reason: 'no OCI runtime could run a container',
      }),
    )
    assert.equal(none.level, 'fail')
    assert.match(none.detail, /crun run: cgroups in hybrid mode/)
    const asUser = checkOciRuntime(crun, runc, null, choice({ reason: 'needs root' }))
    assert.equal(asUser.level, 'warn')
    assert.equal(asUser.detail, 'needs root')
    // Nothing installed is a failure whoever asks.
    const missing = checkOciRuntime(null, null, null, choice({ reason: 'needs root' }))
    assert.equal(missing.level, 'fail')
    assert.match(missing.fix ?? '', /install .* crun$/)
  })
})
