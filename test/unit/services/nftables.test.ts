import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { describe, it } from 'node:test'
import { renderNftables } from '../../../src/network/nftables.ts'
import { serviceEndpoints } from '../../../src/services/endpoints.ts'

const base = { subnet: '10.42.3.0/24', clusterCidr: '10.42.0.0/16', serviceCidr: '10.43.0.0/16' }
const web = {
  name: 'web',
  ip: '10.43.12.7',
  ports: [8080],
  endpoints: ['10.42.1.5', '10.42.2.9', '10.42.3.2'],
}

describe('service load balancing in the nftables table', () => {
  it('dispatches IP . proto . port through one vmap to a chain that round-robins the endpoints', () => {
    const text = renderNftables({ ...base, services: [web] })
    assert.match(text, /10\.43\.12\.7 \. tcp \. 8080 : goto svc-web/)
    assert.match(
      text,
      /dnat ip to numgen inc mod 3 map \{ 0 : 10\.42\.1\.5, 1 : 10\.42\.2\.9, 2 : 10\.42\.3\.2 \}/,
    )
    assert.match(
      text,
      /type nat hook prerouting priority dstnat;[^\n]*\n\s+ip daddr \. meta l4proto \. th dport vmap @services/,
    )
    assert.match(text, /type nat hook output priority -100;/)
    assert.match(
      text,
      /ct status dnat ip saddr 10\.42\.3\.0\/24 ip daddr 10\.42\.3\.0\/24 oifname "km1s0" masquerade/,
    )
    assert.match(text, /ip daddr 10\.43\.0\.0\/16 meta l4proto tcp reject with tcp reset/)
  })

  it('is pure and ordered: the same services in any order give the same bytes', () => {
    const other = { name: 'api', ip: '10.43.0.9', ports: [80, 81], endpoints: ['10.42.5.5'] }
    assert.equal(
      renderNftables({ ...base, services: [web, other] }),
      renderNftables({ ...base, services: [other, web] }),
    )
  })

  it('a service without endpoints or ports has no chain (its connections are refused)', () => {
    const text = renderNftables({
      ...base,
      services: [
        { ...web, endpoints: [] },
        { ...web, name: 'x', ports: [] },
      ],
    })
    assert.doesNotMatch(text, /svc-/)
    assert.doesNotMatch(text, /elements/)
  })

  it('without a service range it is the masquerade alone', () => {
    assert.doesNotMatch(
      renderNftables({ subnet: base.subnet, clusterCidr: base.clusterCidr }),
      /services|dnat/,
    )
  })

  it('endpoints are the running, healthy replicas of the service workload, as DNS has them', () => {
    const st = (ip: string, state: string, healthy: boolean) => ({
      workload: 'web',
      node: 'n1',
      state,
      ip,
      restarts: 0,
      reason: null,
      startedAt: 1,
      index: 0,
      spec: 'abc',
      healthy,
    })
    const list = serviceEndpoints([
      {
        key: 'service/web',
        value: { ip: '10.43.1.1', workload: 'web', headless: false, ports: [80], claimedAt: 1 },
        deleted: false,
      },
      { key: 'status/p1/web-1', value: st('10.42.1.3', 'running', true), deleted: false },
      { key: 'status/p2/web-0', value: st('10.42.2.3', 'running', true), deleted: false },
      { key: 'status/p3/web-2', value: st('10.42.3.3', 'running', false), deleted: false },
      { key: 'status/p4/web-3', value: st('10.42.4.3', 'degraded', true), deleted: false },
      { key: 'status/p5/web-4', value: st('10.42.5.3', 'running', true), deleted: true },
    ])
    assert.deepEqual(
      list.map((s) => [s.name, s.endpoints, s.total]),
      [['web', ['10.42.2.3', '10.42.1.3'], 4]],
    )
  })

  it('nft accepts the file (check mode, in a new network namespace)', {
    skip: process.getuid?.() !== 0 ? 'needs root' : false,
  }, () => {
    const many = Array.from({ length: 50 }, (_, i) => ({
      name: `s${i}`,
      ip: `10.43.${i}.1`,
      ports: [80, 443],
      endpoints: Array.from({ length: (i % 4) + 1 }, (_, j) => `10.42.${j}.${i + 2}`),
    }))
    execFileSync('unshare', ['-n', 'nft', '-c', '-f', '-'], {
      input: renderNftables({ ...base, services: many }),
    })
    execFileSync('unshare', ['-n', 'nft', '-c', '-f', '-'], {
      input: renderNftables({ ...base, services: [] }),
    })
  })
})
