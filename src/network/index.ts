export * from './container-net.ts'
