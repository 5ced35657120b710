// runtime/: runs containers. Today: the OCI config of one process (oci.ts) and which OCI runtime this host can
// use, found by running a throw-away container (detect.ts). Supervision, logs and exec follow (docs/runtime.md).
export {
  type DetectOptions,
  detectOciRuntime,
  hybridWrapper,
  type OciRuntimeAttempt,
  type OciRuntimeChoice,
  type OciRuntimeName,
} from './detect.ts'
export { prepareRootfs, presentSystemPaths } from './host.ts'
export {
  type ContainerProcessSpec,
  cpuQuota,
  DEFAULT_SYSTEM_PATHS,
  type HostsEntry,
  type OciConfig,
  ociConfig,
  parseContainerProcessSpec,
  type ResolvConf,
  renderHostname,
  renderHosts,
  renderResolvConf,
} from './oci.ts'
