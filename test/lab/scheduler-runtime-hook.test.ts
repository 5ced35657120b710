// The runtime's change hook the scheduler's status records follow: a listener hears a container become
// running, a process exit and its back-off, and nothing after it unsubscribes. The process runtime needs
// no root; the oci runtime runs too as root.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { ContainerStatus } from '../../src/runtime/types.ts'
import { isRoot, runtimeHarness, until } from './runtime-fixture.ts'

for (const kind of ['process', 'oci'] as const) {
  describe(`Runtime.onChange (${kind})`, { skip: kind === 'oci' && !isRoot ? 'needs root' : false }, () => {
    it('tells listeners about starts, exits and back-offs, until they unsubscribe', async () => {
      const h = await runtimeHarness(kind)
      try {
        const seen: ContainerStatus[] = []
        const off = h.runtime.onChange((s) => seen.push(s))
        await h.runtime.create({
          name: 'hook',
          processes: [{ name: 'main', args: ['/bin/sh', '-c', 'sleep 0.3; exit 3'], restart: 'on-failure' }],
        })
        await until('running heard', () => seen.some((s) => s.name === 'hook' && s.state === 'running'))
        await until('the exit and back-off heard', () =>
          seen.some((s) => s.processes[0]?.state === 'backoff' && s.processes[0]?.lastExit?.code === 3),
        )
        off()
        const count = seen.length
        await new Promise((r) => setTimeout(r, 800))
        assert.equal(seen.length, count, 'nothing after unsubscribing')
        await h.runtime.remove('hook')
      } finally {
        await h.destroy()
      }
    })
  })
}
