import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import {
  hybridV2Mount,
  hybridWrapper,
  isStaleProbe,
  removeProbeCgroups,
} from '../../../src/runtime/detect.ts'

describe('runtime detection helpers', () => {
  it('passes the cgroup2 mount to the wrapper as an argument, never inside the script', () => {
    const wrapper = hybridWrapper('/usr/bin/unshare', '/sys/fs/cgroup/unified')
    assert.deepEqual(wrapper.slice(0, 4), ['/usr/bin/unshare', '-m', '--propagation', 'private'])
    assert.equal(wrapper.at(-1), '/sys/fs/cgroup/unified')
    assert.doesNotMatch(wrapper[6] ?? '', /unified/)
  })

  it('recognises the hybrid wrapper, and no other, as one a shared mount namespace can replace', () => {
    const wrapper = hybridWrapper('/usr/bin/unshare', '/sys/fs/cgroup/unified')
    assert.equal(hybridV2Mount(wrapper), '/sys/fs/cgroup/unified')
    assert.equal(hybridV2Mount([]), undefined)
    assert.equal(hybridV2Mount(['/usr/bin/runc-wrapper']), undefined)
    assert.equal(hybridV2Mount(wrapper.map((w) => (w === 'private' ? 'shared' : w))), undefined)
  })

  it('calls a probe cgroup stale only when its process is gone and is not us', () => {
    const alive = (pid: number) => pid === 7
    assert.equal(isStaleProbe('km1s-probe-9-1', alive), true)
    assert.equal(isStaleProbe('km1s-probe-7-1', alive), false)
    assert.equal(
      isStaleProbe(`km1s-probe-${process.pid}-3`, () => false),
      false,
    )
    assert.equal(isStaleProbe('km1s-web-1', alive), false)
    assert.equal(isStaleProbe('km1s-probe-9', alive), false)
  })

  it('removes the wanted directories at the top of every hierarchy and nothing else', async () => {
    const root = await mkdtemp(join(tmpdir(), 'km1s-test-cgroup-'))
    try {
      for (const dir of [
        'memory/km1s-probe-1-1',
        'pids/km1s-probe-1-1',
        'unified/km1s-probe-1-1',
        'memory/keep',
      ])
        await mkdir(join(root, dir), { recursive: true })
      const left = await removeProbeCgroups(root, (name) => name === 'km1s-probe-1-1')
      assert.deepEqual(left, [])
      assert.deepEqual(await readdir(join(root, 'memory')), ['keep'])
      assert.deepEqual(await readdir(join(root, 'pids')), [])
      assert.deepEqual(await readdir(join(root, 'unified')), [])
    } finally {
      await rm(root, { recursive: true, force: true })
    }
  })
})
