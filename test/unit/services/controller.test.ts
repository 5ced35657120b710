import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import pino from 'pino'
import { normalizeWorkload } from '../../../src/scheduler/workload.ts'
import { type ServiceStore, Services } from '../../../src/services/controller.ts'
import type { JsonValue, SignedRecord } from '../../../src/state/index.ts'

/** The slice of the Store the controller uses, in memory. */
function memoryStore(): ServiceStore & { map: Map<string, JsonValue> } {
  const map = new Map<string, JsonValue>()
  const rec = (key: string, value: JsonValue) => ({ key, value, deleted: false }) as unknown as SignedRecord
  return {
    map,
    list: (prefix) =>
      [...map]
        .filter(([k]) => k.startsWith(prefix))
        .sort()
        .map(([k, v]) => rec(k, v)),
    put: async (key, value) => {
      map.set(key, value)
      return rec(key, value)
    },
    delete: async (key) => {
      map.delete(key)
      return rec(key, null)
    },
    onChange: () => () => {},
  }
}

describe('Services', () => {
  it('writes a record per named service, is quiet when all is as wanted, removes what no workload names', async () => {
    const store = memoryStore()
    const services = new Services({ store, logger: pino({ level: 'silent' }), now: () => 1000 })
    const web = normalizeWorkload({ name: 'web', command: ['/bin/true'], ports: [8080], service: 'web' })
    store.map.set('workload/web', web as unknown as JsonValue)
    await services.reconcile()
    const value = store.map.get('service/web') as { ip: string; workload: string; claimedAt: number }
    assert.match(value.ip, /^10\.43\./)
    assert.equal(value.workload, 'web')
    assert.equal(services.writes, 1)
    await services.reconcile()
    assert.equal(services.writes, 1, 'nothing to write the second time')
    const [listed] = services.list()
    assert.deepEqual([listed?.name, listed?.ip, listed?.endpoints, listed?.total], ['web', value.ip, [], 0])
    store.map.delete('workload/web')
    await services.reconcile()
    assert.equal(store.map.has('service/web'), false)
  })
})
